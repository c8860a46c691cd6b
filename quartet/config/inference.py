"""Config groups of the sampling methods: batch inference, rejection sampling, iterative DPO.

They reuse the trainer groups (``--model.*``, ``--train.*``, ``--ds.*``, ``--adam.*`` ...)
and add three of their own, named like ``quartet ppo``'s: ``--vllm.*`` (where samples come
from), ``--rollout.*`` (how to sample) and ``--reward.*`` (what scores them). OpenRLHF's
``batch_inference`` flags ``--eval_task``, ``--best_of_n``, ``--post_processor`` and
``--output_path`` stay flat, as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quartet.config.base import check, flat_group, group_under
from quartet.config.data import DataConfig
from quartet.config.jobs import TrainerJobConfig
from quartet.config.methods import reject_unused_data
from quartet.config.model import ModelConfig
from quartet.config.objectives import DPOObjectiveConfig

__all__ = [
    "INFERENCE_RENAMED_FLAGS",
    "BatchInferenceJobConfig",
    "GenerationEngineConfig",
    "InferenceDataConfig",
    "InferenceTaskConfig",
    "IterativeDPOJobConfig",
    "PromptEvalConfig",
    "RSJobConfig",
    "RewardSourceConfig",
    "RoundsConfig",
    "RoundsJobConfig",
    "SamplingGroupConfig",
]

# OpenRLHF batch_inference's flat flags and where they went.
INFERENCE_RENAMED_FLAGS: dict[str, str] = {
    "--max_new_tokens": "--rollout.max_new_tokens",
    "--prompt_max_len": "--rollout.prompt_max_len",
    "--temperature": "--rollout.temperature",
    "--top_p": "--rollout.top_p",
    "--greedy_sampling": "--rollout.temperature 0",
    "--tp_size": "--vllm.tensor_parallel_size",
    "--max_num_seqs": "--vllm.max_model_len (vLLM schedules sequences itself)",
    "--micro_batch_size": "--reward.micro_batch_size",
    "--reward_template": "--data.input_template",
    "--enable_csft": "--post_processor csft",
    "--csft_prompt": "--data.input_template with a {score} slot",
    "--iter": "--data.max_samples (one command does all rows)",
    "--rollout_batch_size": "--data.max_samples (one command does all rows)",
    "--normalize_reward": "a --reward.func that normalises",
    "--value_head_prefix": "the reward model's own config (AutoModelForSequenceClassification)",
}


@dataclass(frozen=True)
class InferenceDataConfig(DataConfig):
    """``--data.*`` of batch inference: prompts (and, for ``--eval_task rm``, responses)."""

    label_key: str | None = None
    """Row key of the reference answer passed to reward functions as `labels`."""
    condition: tuple[str, ...] = ()
    """``KEY=VALUE`` values of named ``--data.input_template`` slots, overriding the row's
    fields: conditional SFT steers generation by setting the condition (``score=9``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for item in self.condition:
            check("=" in item and item.split("=", 1)[0], "condition",
                  f"expected KEY=VALUE, got {item!r}")

    def condition_slots(self) -> dict[str, str | float]:
        """The condition as template slots; numbers become floats so ``{score:.0f}`` works."""
        out: dict[str, str | float] = {}
        for item in self.condition:
            key, value = item.split("=", 1)
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
        return out


@dataclass(frozen=True)
class GenerationEngineConfig:
    """``--vllm.*``: the generation engine — rollout services, or one started in-process."""

    address: tuple[str, ...] = ()
    """host:port of running rollout services (``quartet serve rollout``); empty starts an
    engine in this process."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    """Engine started in this process: vLLM when importable (auto), or Hugging Face generate
    (``--eval_task generate`` always uses hf)."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism of the in-process engine."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the in-process engine."""
    max_model_len: int | None = None
    """Context length of the in-process engine; None uses the model's."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory the in-process vLLM engine may use (GPU only)."""

    def __post_init__(self) -> None:
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size",
              f"must be >= 1, got {self.tensor_parallel_size}")


@dataclass(frozen=True)
class SamplingGroupConfig:
    """``--rollout.*``: how to sample."""

    max_new_tokens: int = 64
    """Most tokens generated per sample."""
    prompt_max_len: int = 1024
    """Prompts longer than this many tokens are skipped (with a warning)."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling; -1 disables."""
    seed: int | None = 42
    """Seed of sample k of prompt i (seed + i * n + k); none draws from the engine RNG."""

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got "
              f"{self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class RewardSourceConfig:
    """``--reward.*``: what scores samples (several sources are summed with weights)."""

    model_name_or_path: tuple[str, ...] = ()
    """Sequence-regression reward model(s) (e.g. trained by train_rm), run in this process."""
    prm_model_name_or_path: tuple[str, ...] = ()
    """Process reward model(s) trained by train_prm, run in this process: per-step scores
    (written as ``step_scores``), reward = the lowest step score."""
    func: tuple[str, ...] = ()
    """Python file(s) defining reward_func(queries, prompts, labels)."""
    address: tuple[str, ...] = ()
    """host:port of running reward services (any implementation of quartet.v1.Reward)."""
    remote_url: tuple[str, ...] = ()
    """OpenRLHF-style HTTP reward servers (POST {query, prompts, labels} -> {rewards})."""
    weights: tuple[float, ...] = ()
    """Weight of each source (order: models, PRMs, funcs, addresses, remote urls); default
    all 1."""
    micro_batch_size: int = 8
    """Samples per forward of an in-process reward model."""

    def num_sources(self) -> int:
        return (len(self.model_name_or_path) + len(self.prm_model_name_or_path) + len(self.func)
                + len(self.address) + len(self.remote_url))

    def __post_init__(self) -> None:
        if self.weights:
            check(len(self.weights) == self.num_sources(), "weights",
                  f"has {len(self.weights)} values for {self.num_sources()} reward sources")
        check(self.micro_batch_size >= 1, "micro_batch_size",
              f"must be >= 1, got {self.micro_batch_size}")


@dataclass(frozen=True)
class InferenceTaskConfig:
    """Flat flags of ``batch_inference`` (OpenRLHF's names)."""

    eval_task: Literal["generate_vllm", "generate", "rm"] = "generate_vllm"
    """generate_vllm: sample with vLLM (in-process or --vllm.address); generate: the same
    with Hugging Face generate; rm: score the (prompt, response) rows of --data.dataset."""
    best_of_n: int = 1
    """Samples per prompt."""
    post_processor: Literal["rs", "csft"] | None = None
    """rs: keep the best-rewarded sample of each prompt; csft: keep all, with the reward
    attached as ``score`` (conditional SFT data). Both need a --reward.* source."""
    output_path: str = ""
    """jsonl file written (one row per sample: input, output, prompt, label, reward, ...)."""

    def __post_init__(self) -> None:
        check(self.best_of_n >= 1, "best_of_n", f"must be >= 1, got {self.best_of_n}")
        check(bool(self.output_path), "output_path", "is required")


def _check_reward(reward: RewardSourceConfig, why: str) -> None:
    check(reward.num_sources() > 0, "--reward.func",
          f"{why} needs a reward source: --reward.model_name_or_path, "
          "--reward.prm_model_name_or_path, --reward.func, --reward.address or "
          "--reward.remote_url")


@dataclass(frozen=True)
class BatchInferenceJobConfig:
    """Batch inference: sample best-of-n responses and/or score them; write jsonl."""

    task: InferenceTaskConfig = flat_group(InferenceTaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: InferenceDataConfig = field(default_factory=InferenceDataConfig)
    vllm: GenerationEngineConfig = field(default_factory=GenerationEngineConfig)
    rollout: SamplingGroupConfig = field(default_factory=SamplingGroupConfig)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)

    def __post_init__(self) -> None:
        check(bool(self.data.dataset), "--data.dataset", "is required")
        unused = ("chosen_key", "rejected_key", "margin_key", "prompt_key", "multiturn",
                  "max_len")
        reject_unused_data(self.data, unused + (() if self.task.eval_task == "rm"
                                                else ("output_key",)),
                           f"batch_inference --eval_task {self.task.eval_task} (prompt length: "
                           "--rollout.prompt_max_len)")
        if self.task.eval_task == "rm":
            _check_reward(self.reward, "--eval_task rm")
            check(self.data.output_key is not None, "--data.output_key",
                  "names the response to score with --eval_task rm")
        else:
            check(bool(self.model.model_name_or_path), "--model.model_name_or_path",
                  f"is required with --eval_task {self.task.eval_task}")
        if self.task.eval_task == "generate":
            check(self.vllm.backend != "vllm", "--vllm.backend",
                  "vllm contradicts --eval_task generate (Hugging Face generate); use "
                  "--eval_task generate_vllm")
        if self.task.post_processor:
            _check_reward(self.reward, f"--post_processor {self.task.post_processor}")

    @property
    def backend(self) -> str:
        """The in-process engine: hf for ``generate``, else ``--vllm.backend``."""
        return "hf" if self.task.eval_task == "generate" else self.vllm.backend


@dataclass(frozen=True)
class PromptEvalConfig:
    """``--eval.*``: held-out prompts whose greedy samples are scored before and after each
    round (the method's measured effect)."""

    dataset: str | None = None
    """Evaluation prompts (same formats as --data.dataset); none skips evaluation."""
    split: str = "train"
    """Split of a hub dataset or directory."""
    max_samples: int = 64
    """Evaluate on at most this many prompts."""


@dataclass(frozen=True)
class RoundsConfig:
    """Flat flags of the iterative methods."""

    num_rounds: int = 2
    """Rounds of sample -> score -> train, each starting from the last round's policy."""
    best_of_n: int = 4
    """Samples per prompt each round."""

    def __post_init__(self) -> None:
        check(self.num_rounds >= 1, "num_rounds", f"must be >= 1, got {self.num_rounds}")
        check(self.best_of_n >= 1, "best_of_n", f"must be >= 1, got {self.best_of_n}")


@dataclass(frozen=True)
class RoundsJobConfig(TrainerJobConfig):
    """Groups shared by rejection sampling and iterative DPO: the trainer groups (each round
    trains with them) plus where samples come from and what scores them."""

    data: InferenceDataConfig = field(default_factory=InferenceDataConfig)
    eval: PromptEvalConfig = field(default_factory=PromptEvalConfig)  # type: ignore[assignment]
    rounds: RoundsConfig = flat_group(RoundsConfig)
    vllm: GenerationEngineConfig = field(default_factory=GenerationEngineConfig)
    rollout: SamplingGroupConfig = field(default_factory=SamplingGroupConfig)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        reject_unused_data(self.data, ("output_key", "chosen_key", "rejected_key", "margin_key",
                                       "prompt_key", "multiturn"),
                           "the iterative methods (--data.* describes prompts)")
        _check_reward(self.reward, "every round")
        check(self.rollout.temperature > 0, "--rollout.temperature",
              "must be > 0: best-of-n needs different samples")


@dataclass(frozen=True)
class RSJobConfig(RoundsJobConfig):
    """Rejection-sampling fine-tuning: each round samples best-of-n from the current policy,
    keeps the best-rewarded response per prompt and runs SFT on them."""


@dataclass(frozen=True)
class IterativeDPOJobConfig(RoundsJobConfig):
    """Iterative (online) DPO: each round samples n responses per prompt from the current
    policy, pairs the best with the worst by reward and runs DPO against the round's starting
    policy as the reference."""

    dpo: DPOObjectiveConfig = group_under(DPOObjectiveConfig, "model")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds.best_of_n >= 2, "--best_of_n", "must be >= 2 to form pairs")
