"""``--data.*``: which dataset, which keys, how to render and cut samples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields

from quartet.config.base import check


@dataclass(frozen=True)
class DataConfig:
    """Dataset location and the mapping from rows to prompt/response text."""

    dataset: str = ""
    """Local json/jsonl/parquet file or directory, or a hub dataset name; comma-separated for
    several."""
    dataset_probs: str | None = None
    """Comma-separated sampling weights for several datasets (fraction of max_samples each)."""
    dataset_split: str = "train"
    """Split to read from a hub dataset or directory."""
    input_key: str = "input"
    """Row key of the prompt (or of the message list with --data.apply_chat_template)."""
    output_key: str | None = "output"
    """Row key of the SFT target response."""
    chosen_key: str = "chosen"
    """Row key of the preferred response."""
    rejected_key: str = "rejected"
    """Row key of the dispreferred response."""
    margin_key: str = "margin"
    """Row key of the per-pair margin (with --model.margin_loss_enable)."""
    prompt_key: str | None = None
    """Row key of the preference prompt; None uses --data.input_key when the row has it."""
    input_template: str | None = None
    """Python format string around the prompt, e.g. ``User: {}\\nAssistant: ``."""
    apply_chat_template: bool = False
    """Render prompts and responses with the tokenizer's chat template."""
    tokenizer_chat_template: str | None = None
    """Jinja chat template that replaces the tokenizer's own."""
    multiturn: bool = False
    """Rows are whole conversations; the loss covers every assistant turn."""
    max_len: int = 2048
    """Maximum tokens per sample (prompt + response); longer samples are truncated."""
    max_samples: int = 100_000_000
    """Use at most this many rows."""

    def __post_init__(self) -> None:
        check(self.max_len > 1, "max_len", f"must be > 1, got {self.max_len}")
        check(self.max_samples > 0, "max_samples", f"must be > 0, got {self.max_samples}")
        if self.input_template is not None:
            check("{}" in self.input_template, "input_template",
                  f"must contain '{{}}' where the prompt goes, got {self.input_template!r}")
        check(not self.multiturn or self.apply_chat_template, "multiturn",
              "requires --data.apply_chat_template")


def reject_unused_keys(data: DataConfig, unused: Mapping[str, str], user: str) -> None:
    """Fail (naming the flag and why) when a ``--data.*`` key that ``user`` never reads was set
    to anything but its default: a flag must not parse and then do nothing."""
    defaults = {f.name: f.default for f in fields(data) if f.default is not MISSING}
    for name, why in unused.items():
        check(getattr(data, name) == defaults[name], f"--data.{name}",
              f"is not used by {user}: {why}")
