"""A tqdm progress bar over optimizer steps, showing loss, lr and throughput."""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]

_SHOWN = ("loss", "lr", "tokens_per_s")


class ProgressBar:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                         dynamic_ncols=True)

    def update(self, metrics: dict[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if k in _SHOWN or k.endswith("acc")}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
