"""``--ckpt.*``: DeepSpeed checkpoints for resume and Hugging Face exports."""

from __future__ import annotations

from dataclasses import dataclass

from quartet.config.base import check


@dataclass(frozen=True)
class CkptConfig:
    """Where and how often to save."""

    output_dir: str = "./ckpt"
    """Final Hugging Face model (or LoRA adapter) is written here."""
    path: str | None = None
    """DeepSpeed checkpoint directory (default: ``<output_dir>/ds_ckpt``)."""
    save_steps: int = -1
    """Save a DeepSpeed checkpoint every N optimizer steps (-1: only at the end)."""
    max_num: int = 3
    """Keep at most this many DeepSpeed checkpoints (oldest deleted first)."""
    max_mem: float = 1000
    """Keep checkpoints under this many GB (2**30 bytes) in total, oldest deleted first; the
    newest is always kept."""
    load_enable: bool = False
    """Resume from the latest DeepSpeed checkpoint in --ckpt.path if there is one."""
    save_hf: bool = False
    """Also export a Hugging Face model next to each DeepSpeed checkpoint."""
    disable_ds: bool = False
    """Do not write DeepSpeed checkpoints (final HF export only)."""

    def __post_init__(self) -> None:
        check(self.max_num >= 1, "max_num", f"must be >= 1, got {self.max_num}")
        check(self.max_mem > 0, "max_mem", f"must be > 0 GB, got {self.max_mem}")
        check(self.save_steps == -1 or self.save_steps > 0, "save_steps",
              f"must be -1 or > 0, got {self.save_steps}")

    @property
    def ds_path(self) -> str:
        """Resolved DeepSpeed checkpoint directory."""
        return self.path or f"{self.output_dir.rstrip('/')}/ds_ckpt"
