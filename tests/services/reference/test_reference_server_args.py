"""The reference server's flags: none parses and then does nothing."""

from __future__ import annotations

import argparse

import pytest

from services.reference.server import _model, add_arguments


def test_spill_dir_without_enable_sleep_is_refused_before_loading():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "/nonexistent/model", "--spill-dir", "/tmp"])
    with pytest.raises(ValueError, match="--spill-dir: only read with --enable-sleep"):
        _model(args)
