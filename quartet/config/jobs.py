"""Job configs: each trainer composes only the groups it needs (TRL's pattern, typed).

A job is frozen after parsing; cross-group rules are checked here, once, and name flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quartet.config.base import check, flat_group, group_under
from quartet.config.ckpt import CkptConfig
from quartet.config.data import DataConfig, reject_unused_keys
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.eval import EvalConfig
from quartet.config.logger import LoggerConfig
from quartet.config.model import ModelConfig
from quartet.config.objectives import DPOObjectiveConfig, RMObjectiveConfig, SFTObjectiveConfig
from quartet.config.optim import AdamConfig, MuonConfig, OptimConfig
from quartet.config.ref import RefConfig
from quartet.config.train import TrainConfig

PAIRS_HAVE_NO_OUTPUT = ("preference rows have --data.chosen_key and --data.rejected_key "
                        "responses, no single --data.output_key")


@dataclass(frozen=True)
class TrainerJobConfig:
    """Groups every trainer shares."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ds: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = flat_group(OptimConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    muon: MuonConfig = field(default_factory=MuonConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check(bool(self.model.model_name_or_path), "--model.model_name_or_path", "is required")
        check(bool(self.data.dataset), "--data.dataset", "is required")
        check(not (self.optim.optim == "muon" and self.ds.adam_offload), "--ds.adam_offload",
              "is incompatible with --optim muon (DeepSpeed's Muon keeps optimizer state on the "
              "device); drop --ds.adam_offload")
        check(not (self.optim.optim == "muon" and self.ds.lora.rank > 0), "--optim",
              "muon with LoRA is not supported: adapters are tiny matrices, use --optim adam")


@dataclass(frozen=True)
class SFTJobConfig(TrainerJobConfig):
    """Supervised fine-tuning: next-token loss on responses (or everything in pretrain mode)."""

    sft: SFTObjectiveConfig = group_under(SFTObjectiveConfig, "model")

    def __post_init__(self) -> None:
        super().__post_init__()
        pairs = "SFT trains on one response per row, not preference pairs"
        reject_unused_keys(self.data, {"chosen_key": pairs, "rejected_key": pairs,
                                       "margin_key": pairs,
                                       "prompt_key": "SFT reads the prompt from --data.input_key"},
                           "train_sft")
        if not self.sft.pretrain_mode_enable and not self.data.multiturn:
            check(self.data.output_key is not None, "--data.output_key",
                  "is required unless --model.pretrain_mode_enable or --data.multiturn")


@dataclass(frozen=True)
class RMJobConfig(TrainerJobConfig):
    """Reward model: pairwise loss on a scalar value head."""

    rm: RMObjectiveConfig = group_under(RMObjectiveConfig, "model")

    def __post_init__(self) -> None:
        super().__post_init__()
        reject_unused_keys(self.data, {"output_key": PAIRS_HAVE_NO_OUTPUT}, "train_rm")
        check(self.model.aux_loss_coef == 0, "--model.aux_loss_coef",
              "is not supported by train_rm: the reward model runs the decoder without its LM "
              "head, and Hugging Face computes the MoE load-balancing loss only in the "
              "*ForCausalLM forward; train an MoE reward model with 0")


@dataclass(frozen=True)
class DPOJobConfig(TrainerJobConfig):
    """Direct preference optimisation against a frozen reference."""

    dpo: DPOObjectiveConfig = group_under(DPOObjectiveConfig, "model")
    ref: RefConfig = field(default_factory=RefConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        reject_unused_keys(self.data, {
            "output_key": PAIRS_HAVE_NO_OUTPUT,
            "margin_key": "DPO has no per-pair margin (that is train_rm's "
                          "--model.margin_loss_enable)"}, "train_dpo")
