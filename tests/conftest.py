"""Session-wide offline fixtures: the tiny model and tiny datasets, built once."""

from __future__ import annotations

import os

import pytest

# Two cores on the CI machine: keep every library to one or two threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path():
    """Directory of the tiny Llama + tokenizer in Hugging Face format (cached across runs)."""
    from quartet.testing import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Paths of the tiny jsonl datasets: keys sft, preference, prompts, chat_sft."""
    from quartet.testing import write_tiny_datasets

    return write_tiny_datasets(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def head16_model():
    """A tiny Llama with head size 16, which vLLM's CPU attention rejects (so `--backend
    auto` falls back to HF generate on it)."""
    from quartet.testing import tiny_model_dir

    return tiny_model_dir(name="tiny-llama-head16", hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=16)
