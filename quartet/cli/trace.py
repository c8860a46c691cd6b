"""`quartet trace FILE [--png OUT]`: where each PPO iteration's time went, per phase and per
service replica, from a span file (`<output_dir>/trace.jsonl`, or the OTel collector's file
exporter output); `--png` also draws the timeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from quartet.telemetry.timeline import draw_timeline, summarize
    from quartet.telemetry.trace_file import read_spans

    parser = argparse.ArgumentParser(prog="quartet trace", description=__doc__)
    parser.add_argument("file", help="span file (JSONL)")
    parser.add_argument("--png", default=None, help="write the timeline here")
    parser.add_argument("--iterations", type=int, default=None,
                        help="draw only the first N iterations")
    args = parser.parse_args(argv)
    try:
        spans = read_spans(args.file)
    except OSError as exc:
        print(f"quartet trace: error: {args.file}: {exc}", file=sys.stderr)
        return 1
    print(summarize(spans))
    if args.png:
        try:
            draw_timeline(spans, Path(args.png), args.iterations)
        except ValueError as exc:
            print(f"quartet trace: error: {exc}", file=sys.stderr)
            return 1
        print(f"timeline: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
