"""A frozen causal LM for scoring: the reference role's engine.

It scores through the same alignment code as the actor (`quartet.engines.scoring`) on the
trainers' `InferenceEngine` (eval mode, no grads, optionally parked on CPU between calls so
an accelerator holds it only while it scores).
"""

from __future__ import annotations

import logging
import threading

import torch

from quartet.codec.batches import RowBatch
from quartet.engines.inference_engine import InferenceEngine
from quartet.engines.scoring import LogProbsResult, response_logprobs

log = logging.getLogger("quartet.engines")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class FrozenCausalLM:
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        offload: bool = False,
        micro_batch_size: int = 8,
        gguf_file: str | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model_path = model_path
        self.micro_batch_size = micro_batch_size
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
        module = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype], **kwargs)
        dev = torch.device(device) if device else default_device()
        self.engine = InferenceEngine(module, dev, DTYPES[dtype], attn_implementation,
                                      offload=offload and dev.type != "cpu")
        self.pad_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id)
        self.vocab_size = int(module.config.vocab_size)
        self.max_len = int(getattr(module.config, "max_position_embeddings", 1 << 30))
        self._lock = threading.Lock()
        log.info("loaded frozen model %s on %s (offload=%s)", model_path, dev,
                 self.engine.offload)

    def logprobs(self, batch: RowBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        # One forward at a time: the model is shared by the server's worker threads.
        with self._lock:
            return response_logprobs(self.engine.logits, batch, self.pad_id, temperature,
                                     self.micro_batch_size, with_entropy)
