"""Benchmarks: `python -m bench <name> [args]` runs `bench.<name>.main(argv)`.

Each benchmark prints human-readable lines and ends with one JSON line of its results.
"""
