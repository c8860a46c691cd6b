"""Config groups and jobs of the methods beyond SFT/RM/DPO: KTO, distillation, PRM.

OpenRLHF spelled their objective flags flat (``--beta``, ``--kd_coef``, ``--vanilla_loss``);
here they share the ``--model.*`` prefix like the DPO objective, the data keys live under
``--data.*`` and the frozen teacher under ``--teacher.*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quartet.config.base import check, group_under
from quartet.config.data import DataConfig, reject_unused_keys
from quartet.config.jobs import SFTJobConfig, TrainerJobConfig
from quartet.config.ref import RefConfig

__all__ = [
    "KDJobConfig",
    "KDObjectiveConfig",
    "KTOJobConfig",
    "KTOObjectiveConfig",
    "LabelledDataConfig",
    "PRMJobConfig",
    "PRMObjectiveConfig",
    "TeacherConfig",
    "reject_unused_data",
]


def reject_unused_data(data: DataConfig, names: tuple[str, ...], command: str) -> None:
    """``--data.<name>`` flags a command does not read must keep their defaults: a set value
    would otherwise be silently ignored."""
    reject_unused_keys(data, dict.fromkeys(names, "the command never reads this key"), command)


@dataclass(frozen=True)
class LabelledDataConfig(DataConfig):
    """``--data.*`` plus the row key of a per-row label (KTO's desirable flag, PRM's step
    labels)."""

    label_key: str = "label"
    """Row key of the label: KTO a bool (desirable or not), PRM a list with one entry per
    step placeholder."""


@dataclass(frozen=True)
class KTOObjectiveConfig:
    """KTO loss options (``--model.*``)."""

    beta: float = 0.1
    """KTO temperature: higher stays closer to the reference."""
    desirable_loss_weight: float = 1.0
    """Weight of desirable samples (raise it when they are rarer, keeping
    w_d * n_d / (w_u * n_u) in [1, 4/3] as the KTO paper advises)."""
    undesirable_loss_weight: float = 1.0
    """Weight of undesirable samples."""
    vanilla_loss: bool = False
    """The paper's first form: no mismatched pairs; each side's reference point is the other
    side's mean log-ratio (every micro-batch must hold both kinds: paired data)."""

    def __post_init__(self) -> None:
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        check(self.desirable_loss_weight >= 0, "desirable_loss_weight",
              f"must be >= 0, got {self.desirable_loss_weight}")
        check(self.undesirable_loss_weight >= 0, "undesirable_loss_weight",
              f"must be >= 0, got {self.undesirable_loss_weight}")


@dataclass(frozen=True)
class KTOJobConfig(TrainerJobConfig):
    """KTO: alignment from unpaired desirable/undesirable responses against a frozen
    reference. Rows are ``{prompt, output, label}``, or preference pairs ``{prompt, chosen,
    rejected}`` split into one desirable and one undesirable sample."""

    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    kto: KTOObjectiveConfig = group_under(KTOObjectiveConfig, "model")
    ref: RefConfig = field(default_factory=RefConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        reject_unused_data(self.data, ("margin_key", "multiturn"), "KTO")
        if self.kto.vanilla_loss:
            check(self.train.micro_batch_size >= 2, "--model.vanilla_loss",
                  "needs --train.micro_batch_size >= 2 (both kinds in every micro-batch)")


@dataclass(frozen=True)
class TeacherConfig:
    """``--teacher.*``: the frozen model distilled from."""

    model_name_or_path: str = ""
    """Teacher weights (HF directory); must share the student's tokenizer."""
    offload: bool = False
    """Keep the teacher on CPU between forward passes."""


@dataclass(frozen=True)
class KDObjectiveConfig:
    """Distillation loss options (``--model.*``)."""

    kd_coef: float = 0.4
    """Loss = (1 - kd_coef) * SFT NLL + kd_coef * KL(teacher || student) over response
    tokens."""
    kd_temperature: float = 1.0
    """Softmax temperature of both distributions inside the KL."""

    def __post_init__(self) -> None:
        check(0 <= self.kd_coef <= 1, "kd_coef", f"must be in [0, 1], got {self.kd_coef}")
        check(self.kd_temperature > 0, "kd_temperature",
              f"must be > 0, got {self.kd_temperature}")


@dataclass(frozen=True)
class KDJobConfig(SFTJobConfig):
    """Knowledge distillation: SFT data, student trained towards a frozen teacher's
    next-token distribution."""

    kd: KDObjectiveConfig = group_under(KDObjectiveConfig, "model")
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.teacher.model_name_or_path), "--teacher.model_name_or_path",
              "is required")


@dataclass(frozen=True)
class PRMObjectiveConfig:
    """Process-reward options (``--model.*``)."""

    placeholder_token: str = "ки"
    """Token that ends each step in the input text; the model predicts a reward token there."""
    reward_tokens: tuple[str, ...] = ("+", "-")
    """Reward tokens, good first (``+`` good step, ``-`` bad step); each must be one token."""

    def __post_init__(self) -> None:
        check(len(self.reward_tokens) >= 2, "reward_tokens",
              f"needs at least two tokens, got {self.reward_tokens}")
        check(self.placeholder_token not in self.reward_tokens, "placeholder_token",
              "must differ from the reward tokens")


@dataclass(frozen=True)
class PRMJobConfig(TrainerJobConfig):
    """Process reward model: ``--data.input_key`` holds the solution with a placeholder after
    each step, ``--data.label_key`` one label per placeholder (a reward token, or a number in
    [0, 1] = P(good step))."""

    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    prm: PRMObjectiveConfig = group_under(PRMObjectiveConfig, "model")

    def __post_init__(self) -> None:
        super().__post_init__()
        reject_unused_data(self.data, ("output_key", "chosen_key", "rejected_key", "margin_key",
                                       "prompt_key", "input_template", "apply_chat_template",
                                       "multiturn"), "train_prm (the input holds the steps)")
