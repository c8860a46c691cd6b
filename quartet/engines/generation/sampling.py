"""Prompt checks shared by every generation backend (`SamplingConfig` validates itself in
`quartet.types`).

Validation happens here, once, with messages that name the field (`prompt_tokens[3]`), so
vLLM and HF `generate` reject the same requests the same way and a bad request never reaches
an engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from quartet.serving.errors import InvalidArgument


def validate_prompts(
    prompts: Sequence[Sequence[int]], vocab_size: int, max_model_len: int,
    field: str = "prompt_tokens", max_new_tokens: int | None = None,
) -> None:
    """Rejects an empty batch, empty prompts, out-of-vocabulary ids and prompts that leave no
    room to generate within `max_model_len` (given `max_new_tokens`: no room for all of
    them; otherwise the backends generate fewer)."""
    if len(prompts) == 0:
        raise InvalidArgument(f"{field}: must hold at least one prompt, got none")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise InvalidArgument(f"{field}[{i}]: empty prompt")
        if len(p) >= max_model_len:
            raise InvalidArgument(
                f"{field}[{i}]: {len(p)} tokens leave no room to generate within the "
                f"context (max_model_len {max_model_len})"
            )
        if max_new_tokens is not None and len(p) + max_new_tokens > max_model_len:
            raise InvalidArgument(
                f"{field}[{i}]: {len(p)} tokens + max_new_tokens {max_new_tokens} exceed this "
                f"rollout's context of {max_model_len} tokens, sized from the run's longest "
                "prompt (--strict-context); start it with a larger --max-model-len "
                "(quartet ppo: --vllm.max_model_len)"
            )
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise InvalidArgument(
                f"{field}[{i}]: token id {bad} is outside the vocabulary [0, {vocab_size})"
            )
