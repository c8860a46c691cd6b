"""`quartet runs --registry redis://host:port/db`: every run recorded in the registry with its
state (iteration, policy version, last checkpoint), and the services registered now."""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from quartet.registry import Registry

    parser = argparse.ArgumentParser(prog="quartet runs", description=__doc__)
    parser.add_argument("--registry", default=os.environ.get("QUARTET_REGISTRY"),
                        help="redis://host:port/db (default: $QUARTET_REGISTRY)")
    args = parser.parse_args(argv)
    if not args.registry:
        print("quartet runs: error: --registry redis://host:port/db is required",
              file=sys.stderr)
        return 2
    registry = Registry(args.registry)
    try:
        runs = registry.runs()
        services = registry.services()
    except Exception as exc:  # noqa: BLE001 - one line, not a redis traceback
        print(f"quartet runs: error: registry {args.registry}: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    print(f"{'run':<36} {'status':<9} {'iter':>9} {'version':>7}  {'updated':>8}  checkpoint")
    for r in runs:
        age = now - float(r.get("updated_at", now))
        print(f"{r['run_id']:<36} {r.get('status', '?'):<9} "
              f"{r.get('iteration', '?'):>4}/{r.get('num_iterations', '?'):<4} "
              f"{r.get('policy_version', '?'):>7}  {age:7.0f}s  {r.get('last_checkpoint', '-')}")
    if not runs:
        print("(no runs)")
    print(f"\n{'service':<10} {'replica':<28} {'address':<22} {'health':<12} {'version':>7} "
          f"{'load':>4}")
    for s in services:
        print(f"{s.role:<10} {s.replica:<28} {s.address:<22} {s.health:<12} "
              f"{s.weight_version:>7} {s.load:>4}")
    if not services:
        print("(no services registered)")
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
