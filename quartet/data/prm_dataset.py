"""Process-reward samples: a solution whose steps each end in a placeholder token, and one
label per placeholder (a reward token such as ``+``/``-``, or P(good step) in [0, 1]).

Truncation at ``--data.max_len`` drops the placeholders past the cut and their labels with
them (OpenRLHF's former PRM dataset did the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quartet.config.methods import LabelledDataConfig
from quartet.data.sources import DataError, RowSource, get_key
from quartet.data.tokenize import TokenizedSample

__all__ = ["PRMSample", "build_prm_samples", "single_token_id"]


@dataclass(frozen=True)
class PRMSample:
    """``sequence.target_mask`` marks the placeholder positions; ``labels`` has one entry per
    marked position: an index into the reward tokens (int) or P(good) (float)."""

    sequence: TokenizedSample
    labels: list[int] | list[float]


def single_token_id(tokenizer: Any, token: str, flag: str) -> int:
    """The id of ``token``, which must encode to exactly one token."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise DataError(f"{flag} {token!r} is {len(ids)} tokens for this tokenizer, not one; "
                        "pick a token of its vocabulary (or add it as a special token)")
    return ids[0]


def _labels(values: Any, reward_tokens: tuple[str, ...], where: str) -> list[int] | list[float]:
    if not isinstance(values, list) or not values:
        raise DataError(f"{where}: expected a non-empty list with one label per step, got "
                        f"{values!r}")
    if all(isinstance(v, str) for v in values):
        unknown = [v for v in values if v not in reward_tokens]
        if unknown:
            raise DataError(f"{where}: labels {unknown} are not reward tokens "
                            f"{list(reward_tokens)} (--model.reward_tokens)")
        return [reward_tokens.index(v) for v in values]
    if all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
           for v in values):
        return [float(v) for v in values]
    raise DataError(f"{where}: labels must all be reward tokens or all numbers in [0, 1], "
                    f"got {values!r}")


def build_prm_samples(sources: list[RowSource], tokenizer: Any, data: LabelledDataConfig,
                      placeholder_token: str, reward_tokens: tuple[str, ...]) -> list[PRMSample]:
    """Tokenize every row; a row's placeholder count must equal its label count."""
    placeholder = single_token_id(tokenizer, placeholder_token, "--model.placeholder_token")
    for token in reward_tokens:
        single_token_id(tokenizer, token, "--model.reward_tokens")
    out: list[PRMSample] = []
    kinds: set[type] = set()
    for source in sources:
        for index, row in enumerate(source.rows):
            text = get_key(row, data.input_key, source.name, "--data.input_key")
            where = f"{source.name} row {index} key {data.label_key!r}"
            labels = _labels(get_key(row, data.label_key, source.name, "--data.label_key"),
                             reward_tokens, where)
            ids = tokenizer(text)["input_ids"]
            steps = sum(t == placeholder for t in ids)
            if steps != len(labels):
                raise DataError(f"{where}: {len(labels)} labels for {steps} placeholders "
                                f"{placeholder_token!r} in --data.input_key {data.input_key!r}")
            ids = ids[: data.max_len]
            mask = [int(t == placeholder) for t in ids]
            kept = sum(mask)
            if kept == 0:
                continue
            kinds.add(type(labels[0]))
            out.append(PRMSample(TokenizedSample(ids, mask), labels[:kept]))
    if len(kinds) > 1:
        raise DataError("PRM labels mix reward tokens and numbers across rows; use one kind")
    return out
