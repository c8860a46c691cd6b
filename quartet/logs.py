"""Process-wide logging setup: one line per record, tagged with the role."""

from __future__ import annotations

import logging
import os


def setup_logging(tag: str = "quartet", level: str | None = None) -> None:
    level = level or os.environ.get("QUARTET_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
