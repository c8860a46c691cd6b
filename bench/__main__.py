"""`python -m bench <name> [args]`: imports `bench.<name>` and calls its `main(argv)`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench <name> [args]\n\nbenchmarks: " + ", ".join(available()))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in available():
        print(f"bench: unknown benchmark {name!r}; available: {', '.join(available())}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
