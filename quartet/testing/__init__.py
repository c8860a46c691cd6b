"""Offline fixtures: a tiny Llama with a locally trained tokenizer, and tiny datasets.

Used by the tests, the docs' runnable examples and the benchmarks. Nothing here touches a hub.
"""

from quartet.testing.tiny import (
    TINY_MODEL_CONFIG,
    build_tiny_model,
    build_tiny_tokenizer,
    tiny_model_dir,
    write_tiny_datasets,
    write_tiny_reward_model,
)

__all__ = [
    "TINY_MODEL_CONFIG",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "tiny_model_dir",
    "write_tiny_datasets",
    "write_tiny_reward_model",
]
