"""The CPU KV cache of a rollout engine, sized from the run's bounds instead of a fixed 1 GiB.

vLLM on CPU reserves `kv_cache_memory_bytes` up front and zero-fills it (resident from the
start). A fixed 1 GiB held 23,296 tokens of SmolLM2-135M in fp32, of which a GRPO run of
64 rows x (<= 60 prompt + 32 new tokens) used 35%. What one generate call can need is
known before the engine starts: rows in flight x blocks per row (prompt + new tokens,
rounded up to vLLM's 128-token CPU blocks), never less than one request of the engine's
context length (vLLM refuses to start otherwise), plus the one null block vLLM's block pool
keeps. A smaller cache never changes what is sampled: requests that do not fit wait in
vLLM's queue (or are preempted and recomputed), which only costs time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

CPU_BLOCK_TOKENS = 128
"""vLLM's CPU block size (vllm/platforms/cpu.py: 128 unless the model uses MLA)."""


@dataclass(frozen=True)
class KVShape:
    """What one token costs in the KV cache, and the context length the engine defaults to."""

    layers: int
    kv_heads: int
    head_dim: int
    max_position_embeddings: int

    def bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes  # keys + values


def kv_shape(model: str | Path) -> KVShape | None:
    """From an HF directory's config.json; None when it cannot be read (a hub id, a GGUF,
    a config without the attention sizes)."""
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        return KVShape(int(cfg["num_hidden_layers"]), int(cfg.get("num_key_value_heads", heads)),
                       head_dim, int(cfg["max_position_embeddings"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kv_cache_bytes(shape: KVShape, dtype_bytes: int, rows: int, tokens_per_row: int,
                   max_model_len: int | None = None,
                   block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """Bytes for `rows` sequences of up to `tokens_per_row` tokens each at once, and at least
    one request of `max_model_len` (default: the model's context length) tokens."""
    if rows < 1 or tokens_per_row < 1:
        raise ValueError(f"rows and tokens_per_row must be >= 1, got {rows}, {tokens_per_row}")
    context = max_model_len or shape.max_position_embeddings
    blocks = max(rows * math.ceil(tokens_per_row / block_tokens),
                 math.ceil(context / block_tokens)) + 1  # + vLLM's null block
    return blocks * block_tokens * shape.bytes_per_token(dtype_bytes)
