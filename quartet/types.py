"""Plain data shared by the clients, the engines and the coordinator.

These types cross every seam: the rollout engine produces `PromptOutput`s, the gRPC client
decodes them, the coordinator consumes them; `SamplingConfig` travels the other way, and
`UpdateResult` answers a weight update wherever it ran. They live here, depending on no
engine, client or service, so each side imports them without importing the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quartet.serving.errors import InvalidArgument

FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class SampleOutput:
    """One sampled response."""

    token_ids: list[int]
    finish_reason: str
    """"stop" (EOS or a stop string), "length" (max_new_tokens or context) or "abort"."""
    logprobs: list[float] | None = None
    """Log-prob of each sampled token under the sampling distribution (temperature, top-k,
    top-p applied; the raw distribution when greedy). None unless requested."""
    text: str | None = None


@dataclass
class PromptOutput:
    """All samples of one prompt."""

    prompt_index: int
    prompt_tokens: list[int]
    samples: list[SampleOutput]
    weight_version: int = 0


@dataclass(frozen=True)
class LoadStats:
    """What one in-place weight load did."""

    num_tensors: int
    num_bytes: int
    seconds: float


@dataclass(frozen=True)
class UpdateResult:
    version: int
    load_seconds: float
    num_tensors: int = 0
    num_bytes: int = 0


MAX_SAMPLES_PER_PROMPT = 1024
MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: one request's parameters, validated on construction."""

    n: int = 1
    """Samples per prompt (>= 1)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 disables."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 (or 0) disables."""
    max_new_tokens: int = 16
    """Most tokens to generate per sample (>= 1); also capped by the context length."""
    min_new_tokens: int = 0
    """Tokens to generate before EOS or a stop string may end a sample."""
    stop: tuple[str, ...] = ()
    """Strings that end a sample (the tokens that complete one are kept)."""
    seed: int | None = None
    """Sample k of prompt i uses seed `seed + i * n + k`; None draws from the engine RNG."""
    logprobs: bool = False
    """Return the log-prob of each sampled token under the sampling distribution."""

    def __post_init__(self) -> None:
        f = "sampling"
        if not 1 <= self.n <= MAX_SAMPLES_PER_PROMPT:
            raise InvalidArgument(f"{f}.n: must be in 1..{MAX_SAMPLES_PER_PROMPT}, got {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(f"{f}.temperature: must be >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidArgument(f"{f}.top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise InvalidArgument(f"{f}.top_k: must be -1 or 0 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise InvalidArgument(
                f"{f}.max_new_tokens: must be >= 1, got {self.max_new_tokens}"
            )
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidArgument(
                f"{f}.min_new_tokens: must be in 0..max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(
                f"{f}.stop: at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}"
            )
        for i, s in enumerate(self.stop):
            if not s:
                raise InvalidArgument(f"{f}.stop[{i}]: must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k > 0 else None

    def sample_seed(self, prompt_index: int, k: int) -> int | None:
        """Per-sample seed: distinct across prompts too, so a fixed seed does not give every
        prompt the same random stream."""
        return None if self.seed is None else self.seed + prompt_index * self.n + k
