"""A frozen causal LM for scoring: the reference role's engine (and DPO's reference).

Frozen means eval mode, no grads, and optionally parked on CPU between calls so an
accelerator holds it only while it scores (`offload=True`).
"""

from __future__ import annotations

import logging
import threading

import torch

from quartet.codec.batches import TokenBatch
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
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model_path = model_path
        self.device = torch.device(device) if device else default_device()
        self.offload = offload and self.device.type != "cpu"
        self.micro_batch_size = micro_batch_size
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=DTYPES[dtype], **kwargs
        )
        self.model.eval().requires_grad_(False)
        self.model.to("cpu" if self.offload else self.device)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self._lock = threading.Lock()
        log.info("loaded frozen model %s on %s (offload=%s)", model_path, self.device,
                 self.offload)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def logprobs(self, batch: TokenBatch, temperature: float = 1.0,
                 with_entropy: bool = False) -> LogProbsResult:
        # One forward at a time: the model is shared by the server's worker threads.
        with self._lock:
            if self.offload:
                self.model.to(self.device)
            try:
                return response_logprobs(
                    self._forward, batch, self.pad_id, temperature,
                    self.micro_batch_size, with_entropy, self.device,
                )
            finally:
                if self.offload:
                    self.model.to("cpu")
