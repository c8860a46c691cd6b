"""A memory budget per local role, checked against the machine before anything starts.

Embedded mode starts every role on one machine; if their sum does not fit, the kernel's OOM
killer ends one of them mid-run, iterations in. The launcher instead estimates each role's
resident memory from the model's size and the job's shapes and refuses to start, naming the
roles and the numbers, when the total exceeds the machine's memory (and warns when it
exceeds what is free right now, since other jobs may leave).

The estimate is deliberately simple and documented here so its errors are easy to reason
about: a process floor (interpreter, torch, transformers, gRPC: measured ~0.8 GiB on this
machine's CPU build), weights at their dtype, and for a trainer fp32 gradients and Adam's two
fp32 moments, plus activations of one micro-batch kept for backward (per token and layer
~(16 x hidden + 4 x intermediate) floats, measured on Llama-style blocks with sdpa) and the
logits window (3 copies: logits, log-softmax row, gradient). vLLM adds its KV cache.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("quartet.launch")

GIB = 1 << 30
PROCESS_FLOOR_BYTES = int(0.8 * GIB)
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


class MemoryBudgetError(RuntimeError):
    """The planned roles do not fit in this machine's memory."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int


def _safetensors_params(directory: Path) -> int:
    """Exact parameter count from the safetensors headers (no weights are read)."""
    total = 0
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= d
                total += count
    return total


def model_shape(path: str | Path) -> ModelShape | None:
    """The sizes the budget needs, from an HF directory; None when they cannot be read
    (a hub id, a GGUF): that role is then left out of the check, with a log line."""
    d = Path(path)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return None
    hidden = int(cfg.get("hidden_size", 0))
    layers = int(cfg.get("num_hidden_layers", 0))
    inter = int(cfg.get("intermediate_size", 4 * hidden))
    vocab = int(cfg.get("vocab_size", 0))
    params = _safetensors_params(d)
    if not params:
        params = vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2) + layers * (
            4 * hidden * hidden + 3 * hidden * inter)
    return ModelShape(params, hidden, layers, inter, vocab)


def activation_bytes(m: ModelShape, micro_batch: int, seq_len: int, logits_window: int,
                     backward: bool) -> int:
    per_token_layer = 16 * m.hidden + 4 * m.intermediate
    acts = micro_batch * seq_len * m.layers * per_token_layer * 4
    logits = micro_batch * logits_window * m.vocab * 4 * (3 if backward else 2)
    return (acts if backward else acts // m.layers * 2) + logits


def trainer_bytes(m: ModelShape, dtype: str, micro_batch: int, seq_len: int,
                  window: int) -> int:
    weights = m.params * DTYPE_BYTES.get(dtype, 4)
    master = 0 if DTYPE_BYTES.get(dtype, 4) == 4 else m.params * 4
    optimizer = m.params * (4 + 8)  # fp32 gradients + Adam's two moments
    return (PROCESS_FLOOR_BYTES + weights + master + optimizer
            + activation_bytes(m, micro_batch, seq_len, window, backward=True))


def scorer_bytes(m: ModelShape, dtype: str, micro_batch: int, seq_len: int,
                 window: int, ranks: int = 1, sharded: bool = False) -> int:
    """A frozen scorer's `ranks` processes: each its own floor and activations, and the
    weights in `dtype` once per rank — or split over them under ZeRO-3 (`sharded`)."""
    weights = m.params * DTYPE_BYTES.get(dtype, 4)
    return (ranks * (PROCESS_FLOOR_BYTES
                     + activation_bytes(m, micro_batch, seq_len, window, backward=False))
            + (weights if sharded else ranks * weights))


def rollout_bytes(m: ModelShape, dtype: str, kv_cache_bytes: int) -> int:
    return PROCESS_FLOOR_BYTES + m.params * DTYPE_BYTES.get(dtype, 4) + kv_cache_bytes


def machine_bytes() -> tuple[int, int]:
    """(MemTotal, MemAvailable) from /proc/meminfo; (0, 0) where there is none."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return 0, 0

    def kib(key: str) -> int:
        return int(info.get(key, "0 kB").split()[0]) * 1024

    return kib("MemTotal"), kib("MemAvailable")


def check_budget(budget: dict[str, int], total: int | None = None,
                 available: int | None = None) -> None:
    """Raises MemoryBudgetError when the roles' sum exceeds the machine's memory; warns
    when it exceeds what is available now."""
    if total is None or available is None:
        total, available = machine_bytes()
    need = sum(budget.values())
    table = ", ".join(f"{k} {v / GIB:.1f}" for k, v in budget.items())
    if total and need > total:
        raise MemoryBudgetError(
            f"the local roles need ~{need / GIB:.1f} GiB ({table} GiB) but this machine has "
            f"{total / GIB:.1f} GiB: lower --train.micro_batch_size or --rollout.max_new_tokens, "
            f"offload the reference (--ref.offload), or give roles an --*.address elsewhere")
    if available and need > available:
        log.warning("the local roles need ~%.1f GiB (%s GiB); only %.1f GiB is available now",
                    need / GIB, table, available / GIB)
    else:
        log.info("memory budget: ~%.1f GiB (%s GiB) of %.1f GiB", need / GIB, table,
                 total / GIB)
