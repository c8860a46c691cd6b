"""`quartet ppo` flags: OpenRLHF's train_ppo_ray groups, typed (`--actor.*`, `--critic.*`,
`--ref.*`, `--reward.*`, `--vllm.*`, `--rollout.*`, `--train.*`, `--algo.*`, `--ds.*`,
`--data.*`, `--ckpt.*`, `--logger.*`, `--eval.*`).

Every role group has an `address` flag: set it to drive an already-running service (cluster
mode); leave it empty and `quartet ppo` starts that role as a local process (embedded mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quartet.algos.off_policy import ISCorrection
from quartet.config.base import ConfigError, check, flat_group
from quartet.config.ckpt import CkptConfig
from quartet.config.data import DataConfig, reject_unused_keys
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.eval import EvalConfig
from quartet.config.logger import LoggerConfig
from quartet.config.model import check_checkpointing
from quartet.config.optim import OptimConfig
from quartet.config.telemetry import RegistryConfig, TraceConfig
from quartet.config.train import check_batch_sizes


@dataclass(frozen=True)
class PromptDataConfig(DataConfig):
    """``--data.*`` of RL: the prompt dataset (plus the label a rule reward checks against)."""

    input_key: str = "prompt"
    """Row key of the prompt (a string, or a message list with --data.apply_chat_template)."""
    output_key: str | None = None
    """Unused by RL (responses are sampled)."""
    label_key: str | None = None
    """Row key of the reference answer passed to reward functions as `labels`."""
    pretrain_dataset: str | None = None
    """PPO-ptx pre-training text (same formats as --data.dataset); needs --actor.ptx_coef."""
    pretrain_split: str = "train"
    """Split of --data.pretrain_dataset."""
    pretrain_key: str = "text"
    """Row key of the pre-training text."""

    def __post_init__(self) -> None:
        super().__post_init__()
        pairs = "RL has no preference pairs"
        reject_unused_keys(self, {
            "output_key": "RL samples the responses; there is no target response",
            "chosen_key": pairs, "rejected_key": pairs, "margin_key": pairs,
            "prompt_key": "RL reads the prompt from --data.input_key",
            "multiturn": "RL prompts are single prompts; multi-turn rows are not supported",
            "max_len": "RL bounds prompts with --rollout.prompt_max_len and responses with "
                       "--rollout.max_new_tokens",
        }, "quartet ppo")


ESTIMATORS = ("gae", "reinforce", "reinforce_baseline", "rloo", "group_norm", "dr_grpo",
              "flash_reinforce")


@dataclass(frozen=True)
class ActorGroup:
    """``--actor.*``: the policy."""

    model_name_or_path: str = ""
    """Initial policy (HF directory; with --actor.gguf_file, the folder holding it)."""
    gguf_file: str | None = None
    """GGUF file name inside model_name_or_path (dequantized on load)."""
    address: str | None = None
    """host:port of a running actor service; empty starts one locally."""
    learning_rate: float = 1e-6
    """Actor peak learning rate."""
    gradient_checkpointing_enable: bool = False
    """Recompute activations in backward to save memory (the actor and the critic)."""
    gradient_checkpointing_policy: Literal["full", "selective"] = "full"
    """What checkpointing recomputes: full (each layer's forward) or selective (only the
    pointwise ops; keeps matmul and attention outputs). As --model.gradient_checkpointing_policy
    of the trainers; docs/ppo.md "Memory between phases"."""
    num_nodes: int = 1
    """Nodes this role's ranks span (placement; multi-node needs --launcher ray)."""
    num_gpus_per_node: int = 1
    """Ranks (one GPU each; on a host without GPUs one CPU process each) per node."""
    freezing_steps: int = 0
    """Iterations at the start that train only the critic."""
    policy_loss_type: Literal["ppo", "gspo"] = "ppo"
    """Policy loss: PPO's token ratio, or GSPO's sequence ratio (always a sequence-mean loss)."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of a next-token loss on --data.pretrain_dataset rows added to every
    actor step (InstructGPT); 0 disables."""

    def __post_init__(self) -> None:
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check_checkpointing(self.gradient_checkpointing_enable,
                            self.gradient_checkpointing_policy, group="--actor")


@dataclass(frozen=True)
class CriticGroup:
    """``--critic.*``: the value model (used by the gae estimator only)."""

    model_name_or_path: str | None = None
    """Initial critic; default: the reward model when there is one, else the actor."""
    address: str | None = None
    """host:port of a running critic service; empty starts one locally."""
    learning_rate: float = 9e-6
    """Critic peak learning rate."""
    value_clip: float = 0.2
    """Clip range of values around the old values; 0 disables."""
    num_nodes: int = 1
    """Nodes this role's ranks span (placement; multi-node needs --launcher ray)."""
    num_gpus_per_node: int = 1
    """Ranks (one GPU each; on a host without GPUs one CPU process each) per node."""


@dataclass(frozen=True)
class RefGroup:
    """``--ref.*``: the frozen reference policy (the KL anchor)."""

    model_name_or_path: str | None = None
    """Reference model; default: the actor's initial weights."""
    address: str | None = None
    """host:port of a running reference service; empty starts one locally."""
    offload: bool = False
    """Keep the reference on CPU between calls."""
    enable_sleep: bool = False
    """Free the reference's weights after each score phase and read them back, bit for bit,
    from a spill file in the run directory before the next one (page cache: ~0.1-0.3 s for
    a 135M model). Whole weights in CPU memory only: not with --ds.zero_stage 3, several
    reference ranks, or --ref.offload (see docs/ppo.md, "Memory between phases")."""
    num_nodes: int = 1
    """Nodes this role's ranks span (placement; multi-node needs --launcher ray)."""
    num_gpus_per_node: int = 1
    """Ranks (one GPU each; on a host without GPUs one CPU process each) per node."""


@dataclass(frozen=True)
class RewardGroup:
    """``--reward.*``: where rewards come from (one or several sources, combined)."""

    model_name_or_path: tuple[str, ...] = ()
    """Reward model(s) (sequence regression, e.g. trained by train_rm)."""
    func: tuple[str, ...] = ()
    """Python file(s) defining reward_func(queries, prompts, labels)."""
    address: tuple[str, ...] = ()
    """host:port of running reward services (any implementation of quartet.v1.Reward)."""
    remote_url: tuple[str, ...] = ()
    """OpenRLHF-style HTTP reward servers (POST {query, prompts, labels} -> {rewards, ...});
    each gets a local reward role proxying to it."""
    num_nodes: int = 1
    """Nodes each reward model's ranks span (placement; multi-node needs --launcher ray)."""
    num_gpus_per_node: int = 1
    """Ranks of each reward model per node (one GPU each; without GPUs one CPU process)."""
    remote_timeout_s: float = 30.0
    """Timeout of one HTTP attempt."""
    remote_retries: int = 3
    """Retries after a failed HTTP attempt (connection errors, timeouts, 5xx, 429 only)."""
    remote_batch_size: int = 0
    """Samples per HTTP request; 0 sends each batch whole."""
    remote_concurrency: int = 4
    """HTTP requests in flight at once when batches are split."""
    weights: tuple[float, ...] = ()
    """Weight of each source in the sum (order: models, funcs, remote urls, addresses);
    default all 1."""
    normalize_enable: bool = False
    """Normalise rewards with running mean/std."""
    clip_range: float | None = None
    """Clip rewards to [-clip_range, clip_range] before advantages."""
    aggregate_func: str | None = None
    """Python file defining aggregate(scores) -> rewards: scores is a [num_sources, batch]
    tensor; replaces the weighted sum."""
    overlong_buffer_len: int = 0
    """DAPO overlong penalty: responses within this many tokens of --rollout.max_new_tokens
    lose up to --reward.overlong_penalty_factor; 0 disables."""
    overlong_penalty_factor: float = 1.0
    """Largest overlong penalty."""
    stop_properly_penalty_coef: float | None = None
    """Truncated responses (hit max_new_tokens): reward scaled by this coefficient in [0, 1],
    or replaced by it when negative; None disables."""
    offload: bool = False
    """Keep reward models on CPU between calls (like --ref.offload; accelerators only)."""

    def num_sources(self) -> int:
        return (len(self.model_name_or_path) + len(self.func) + len(self.remote_url)
                + len(self.address))


@dataclass(frozen=True)
class VllmGroup:
    """``--vllm.*``: the rollout engines."""

    num_engines: int = 1
    """Rollout replicas to start (embedded mode)."""
    tensor_parallel_size: int = 1
    """GPUs per rollout engine (vLLM tensor parallelism); every TP worker joins the weight
    group as its own rank."""
    address: tuple[str, ...] = ()
    """host:port of running rollout services; empty starts num_engines locally."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    """Generation engine: vLLM when importable (auto), or Hugging Face generate."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the rollout engine (auto: bfloat16 on GPUs, float32 on CPU); actor weights
    are cast to it when synced."""
    max_model_len: int | None = None
    """Context length of the rollout engine. None: for the engines `quartet ppo` starts, the
    run's longest prompt + --rollout.max_new_tokens rounded up to 32-token KV blocks
    (requests beyond it are refused, not cut short), else the model's."""
    kv_cache_mb: int | None = None
    """CPU KV cache of each locally started vLLM engine, MiB. None: sized from the run
    (`quartet.launch.kv_cache`: rows per engine x (longest prompt + max_new_tokens), at
    least one request of the context length), else vLLM-on-CPU's 1 GiB default. Not used
    on GPU (there --vllm.gpu_memory_utilization sizes it)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may use (GPU only)."""
    enforce_eager: bool | None = None
    """Run the rollout engine eagerly (no torch.compile, no CUDA graphs). None: eager on a
    host without a GPU (vLLM's CPU compile adds ~40 s to start-up for ~20% faster decoding,
    measured on SmolLM2-135M: it pays off only after ~40 iterations), vLLM's default on GPU."""
    enable_sleep: bool = False
    """Free each rollout engine's weights and KV cache after the generate phase; the weight
    sync after training brings them back (like OpenRLHF's --vllm_enable_sleep: vLLM's sleep
    level 2 on GPU, quartet's own release on CPU, where vLLM has no sleep mode). Synchronous
    runs only: with --train.async_enable the engines generate while the actor trains."""
    sync_backend: Literal["auto", "gloo", "nccl", "grpc"] = "auto"
    """Weight-sync data plane: a torch.distributed group (nccl on GPU, gloo on CPU) or the
    gRPC-streamed fallback."""
    sync_bucket_mb: int = 64
    """Bucket size of the weight broadcast, MiB (the actor holds one bucket's packing buffer
    while it sends; a larger tensor travels alone, from its own memory)."""
    sync_shared_memory: bool = True
    """With the gloo group (CPU): when the actor and every rollout replica share a host (the
    group checks: same boot id, the actor's /dev/shm file opens on every replica), the
    weights pass through a ring of two slots in /dev/shm (each at most one bucket and 16
    MiB) instead of loopback sockets; a model that fits in the ring is loaded from it in
    place. Other hosts and NCCL broadcast by themselves; false broadcasts always. The
    ring's pages count in the RSS of the actor and of each replica during a sync (at most
    32 MiB each; the broadcast packs into one bucket on the actor)."""
    sync_master_address: str | None = None
    """Address the rollouts reach the actor's weight-group store at; default: the host of
    --actor.address, else the address the actor advertises for its host (a launcher sets
    it: loopback locally, the node's IP under Ray). The port is picked on the actor's host."""

    def engine_dtype(self, on_gpu: bool) -> str:
        """dtype with auto resolved: bfloat16 on GPUs (as OpenRLHF runs), float32 on CPU
        (no fast bf16 kernels on most CPUs)."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if on_gpu else "float32"

    def __post_init__(self) -> None:
        check(self.num_engines >= 1, "num_engines", f"must be >= 1, got {self.num_engines}")
        check(self.kv_cache_mb is None or self.kv_cache_mb > 0, "kv_cache_mb",
              f"must be > 0, got {self.kv_cache_mb}")
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size",
              f"must be >= 1, got {self.tensor_parallel_size}")
        check(self.tensor_parallel_size == 1 or self.backend == "vllm", "tensor_parallel_size",
              f"{self.tensor_parallel_size} needs --vllm.backend vllm (Hugging Face generate "
              "has no tensor parallelism)")


@dataclass(frozen=True)
class RolloutGroup:
    """``--rollout.*``: how much to sample each iteration and how."""

    batch_size: int = 8
    """Prompts per iteration."""
    n_samples_per_prompt: int = 1
    """Samples per prompt (groups for rloo / group_norm / dr_grpo)."""
    max_new_tokens: int = 64
    """Most tokens generated per sample."""
    prompt_max_len: int = 256
    """Prompts longer than this many tokens are skipped."""
    temperature: float = 1.0
    """Sampling temperature (log-probs in training use the same)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling; -1 disables."""
    stop: tuple[str, ...] = ()
    """Stop strings."""

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.n_samples_per_prompt > 0, "n_samples_per_prompt",
              f"must be > 0, got {self.n_samples_per_prompt}")
        check(self.temperature > 0, "temperature",
              f"must be > 0 for RL sampling, got {self.temperature}")


@dataclass(frozen=True)
class PPOTrainGroup:
    """``--train.*``: PPO updates."""

    batch_size: int = 8
    """Rows per optimizer step (the PPO mini-batch)."""
    micro_batch_size: int = 2
    """Rows per forward/backward in the actor and critic."""
    max_epochs: int = 1
    """PPO epochs over each rollout batch."""
    num_iterations: int = 10
    """Iterations (rollout batches) to run."""
    seed: int = 42
    """Seed of data order, sampling and new heads."""
    async_enable: bool = False
    """Generate the next rollout batch while this one trains (one version stale)."""
    pipeline_steps: bool = False
    """Send mini-batch k+1's TrainSteps to the actor and critic services while k trains (they
    apply them in order). Off by default: on the 2-core CPU host it measured slower, 236 ->
    254 ms a train phase of 4 mini-batches (docs/benchmarks.md, "Ninth pass (pipe)")."""
    colocate_actor_ref: bool = False
    """Actor and reference share devices (each gets half of every one)."""
    colocate_critic_reward: bool = False
    """Critic and the reward model(s) share devices."""
    colocate_all_models: bool = False
    """Actor, critic, reference, reward models and the rollout engines share one pool of
    devices (engines x TP must equal the actor's devices); vLLM sleeps while the trainers
    work where the engine supports it (a no-op on CPU)."""

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.micro_batch_size)
        check(self.num_iterations > 0, "num_iterations", f"must be > 0, got {self.num_iterations}")


@dataclass(frozen=True)
class AdvantageGroup:
    """``--algo.advantage.*``."""

    estimator: Literal["gae", "reinforce", "reinforce_baseline", "rloo", "group_norm",
                       "dr_grpo", "flash_reinforce"] = "gae"
    """Advantage estimator; all but gae run without a critic. flash_reinforce: reward minus
    the rollout-batch mean (no group, no whitening)."""
    gamma: float = 1.0
    """Discount factor."""
    lambd: float = 0.95
    """GAE lambda."""
    whiten: bool = True
    """Whiten advantages with global statistics (gae, reinforce, reinforce_baseline)."""
    no_std_norm: bool = False
    """Whitening only subtracts the mean (no division by the standard deviation)."""
    is_correction_level: Literal["off", "token", "seq"] = "off"
    """Importance-sampling correction of sampler vs actor log-probs (off-policy rollouts):
    gate each token or each sequence."""
    is_correction_mode: Literal["mask", "clip"] = "mask"
    """mask: drop out-of-band units, keep the token ratio on the rest (ICEPOP); clip: clamp the
    token ratio into the band (TIS; token level and ratio gating only)."""
    is_correction_gating: Literal["ratio", "binary_kl", "tv"] = "ratio"
    """Gated statistic: the ratio pi_actor/pi_rollout (geometric mean per sequence), or the
    sampled-token binary KL / total variation (upper bound only)."""
    is_correction_threshold: tuple[float, ...] = (0.5, 5.0)
    """LOW HIGH band of the gated statistic; one value is an upper bound only."""

    def __post_init__(self) -> None:
        try:
            self.is_correction()
        except ValueError as exc:
            check(False, "is_correction_*", str(exc))

    def is_correction(self) -> ISCorrection:
        """The validated correction settings."""
        return ISCorrection(self.is_correction_level, self.is_correction_mode,
                            self.is_correction_gating, tuple(self.is_correction_threshold))


@dataclass(frozen=True)
class KLGroup:
    """``--algo.kl.*``."""

    init_coef: float = 0.01
    """KL penalty coefficient; 0 skips the reference model entirely."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator (Schulman's k1/k2/k3)."""
    use_loss: bool = False
    """Put the KL in the actor loss (GRPO style) instead of the reward."""
    target: float | None = None
    """Adaptive KL controller target; None keeps the coefficient fixed."""
    horizon: int = 10000
    """Adaptive KL controller horizon."""
    unbiased_gradient: bool = False
    """KL loss (with --algo.kl.use_loss): keep the estimator's value, use the
    importance-weighted reverse-KL gradient (unbiased under the sampling policy)."""


@dataclass(frozen=True)
class AlgoGroup:
    """``--algo.*``: the objective."""

    advantage: AdvantageGroup = field(default_factory=AdvantageGroup)
    kl: KLGroup = field(default_factory=KLGroup)
    clip_eps_low: float = 0.2
    """Lower clip of the policy ratio (1 - eps)."""
    clip_eps_high: float = 0.2
    """Upper clip of the policy ratio (1 + eps); larger than low is DAPO's clip-higher."""
    dual_clip: float | None = None
    """Dual-clip constant (> 1) for negative advantages; None disables."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    loss_reduction: Literal["token_mean", "sequence_mean", "seq_mean_token_sum",
                            "seq_mean_token_sum_norm"] = "token_mean"
    """How the policy loss reduces over tokens and sequences."""
    dynamic_filtering_enable: bool = False
    """Drop prompt groups whose mean reward is outside the range (all right / all wrong) and
    refill the batch with new prompts."""
    dynamic_filtering_reward_range: tuple[float, float] = (0.0, 1.0)
    """Exclusive range of a kept group's mean reward."""
    dynamic_filtering_max_rounds: int = 4
    """Generation rounds per iteration to fill the batch before training on what passed."""

    def __post_init__(self) -> None:
        check(self.dual_clip is None or self.dual_clip > 1, "dual_clip",
              f"must be > 1, got {self.dual_clip}")
        lo, hi = self.dynamic_filtering_reward_range
        check(lo < hi, "dynamic_filtering_reward_range", f"low must be < high, got {lo} {hi}")
        check(self.dynamic_filtering_max_rounds >= 1, "dynamic_filtering_max_rounds",
              f"must be >= 1, got {self.dynamic_filtering_max_rounds}")


@dataclass(frozen=True)
class RestartGroup:
    """``--restart.*``: what happens when a role process quartet ppo started dies."""

    max_restarts: int = 3
    """Restarts of one role process before it counts as gone (0: a dead role ends the run).
    A restarted actor or critic reloads the last checkpoint and the run replays from it."""
    min_rollout_replicas: int = 1
    """Rollout replicas the run needs: a replica that cannot come back is retired while at
    least this many remain."""

    def __post_init__(self) -> None:
        check(self.max_restarts >= 0, "max_restarts", f"must be >= 0, got {self.max_restarts}")
        check(self.min_rollout_replicas >= 1, "min_rollout_replicas",
              f"must be >= 1, got {self.min_rollout_replicas}")


@dataclass(frozen=True)
class LaunchGroup:
    """``--launcher``: who places the services this run starts."""

    launcher: Literal["local", "ray"] = "local"
    """local: processes on this host (devices assigned per role); ray: placement groups on a
    Ray cluster (--ray.address), or on a local Ray instance started for the run."""


@dataclass(frozen=True)
class RayGroup:
    """``--ray.*``: the Ray cluster of --launcher ray."""

    address: str | None = None
    """Address of a running Ray cluster (host:port, or ``auto``); empty starts a local one
    for the run (loopback, free ports, no dashboard) and ends it afterwards."""


@dataclass(frozen=True)
class PPOJobConfig:
    """PPO (and its critic-free variants) across six services."""

    actor: ActorGroup = field(default_factory=ActorGroup)
    critic: CriticGroup = field(default_factory=CriticGroup)
    ref: RefGroup = field(default_factory=RefGroup)
    reward: RewardGroup = field(default_factory=RewardGroup)
    vllm: VllmGroup = field(default_factory=VllmGroup)
    rollout: RolloutGroup = field(default_factory=RolloutGroup)
    train: PPOTrainGroup = field(default_factory=PPOTrainGroup)
    algo: AlgoGroup = field(default_factory=AlgoGroup)
    ds: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = flat_group(OptimConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    cluster: RegistryConfig = flat_group(RegistryConfig)
    restart: RestartGroup = field(default_factory=RestartGroup)
    launch: LaunchGroup = flat_group(LaunchGroup)
    ray: RayGroup = field(default_factory=RayGroup)

    def __post_init__(self) -> None:
        check(bool(self.actor.model_name_or_path) or bool(self.actor.address),
              "--actor.model_name_or_path", "is required (or --actor.address)")
        check(bool(self.data.dataset), "--data.dataset", "is required (prompt dataset)")
        if self.cluster.registry:
            local = (self.reward.model_name_or_path or self.reward.func
                     or self.reward.remote_url)
            check(not local, "--registry",
                  "the coordinator starts no service in registry mode: run the reward with "
                  "`quartet serve reward ... --registry URL` (or give --reward.address) "
                  "instead of --reward.model_name_or_path/--reward.func/--reward.remote_url")
        else:
            check(self.reward.num_sources() > 0, "--reward.model_name_or_path",
                  "no reward source: give --reward.model_name_or_path, --reward.func, "
                  "--reward.remote_url or --reward.address")
        if self.reward.weights:
            check(len(self.reward.weights) == self.reward.num_sources(), "--reward.weights",
                  f"has {len(self.reward.weights)} values for {self.reward.num_sources()} "
                  "reward sources")
        rows = self.rollout.batch_size * self.rollout.n_samples_per_prompt
        check(rows % self.train.batch_size == 0, "--train.batch_size",
              f"{self.train.batch_size} must divide --rollout.batch_size x "
              f"--rollout.n_samples_per_prompt = {rows}")
        check(not self.reward.offload or bool(self.reward.model_name_or_path),
              "--reward.offload", "applies to reward models; give --reward.model_name_or_path")
        check((self.actor.ptx_coef > 0) == bool(self.data.pretrain_dataset), "--actor.ptx_coef",
              "and --data.pretrain_dataset go together (PPO-ptx: a next-token loss on the "
              "pre-training rows, weighted by ptx_coef > 0)")
        check(self.actor.ptx_coef >= 0, "--actor.ptx_coef", "must be >= 0")
        if self.algo.dynamic_filtering_enable:
            check(self.rollout.n_samples_per_prompt > 1, "--algo.dynamic_filtering_enable",
                  "needs --rollout.n_samples_per_prompt > 1 (it filters prompt groups)")
        if self.reward.overlong_buffer_len:
            check(0 < self.reward.overlong_buffer_len <= self.rollout.max_new_tokens,
                  "--reward.overlong_buffer_len",
                  f"must be in 1..--rollout.max_new_tokens ({self.rollout.max_new_tokens})")
        if self.reward.stop_properly_penalty_coef is not None:
            check(self.reward.stop_properly_penalty_coef <= 1,
                  "--reward.stop_properly_penalty_coef",
                  "must be <= 1 (a scale in [0, 1] or a negative fixed reward)")
        if self.cluster.registry:
            check(self.vllm.sync_backend in ("auto", "grpc"), "--vllm.sync_backend",
                  "must be grpc (or auto) with --registry: rollout replicas come and go, a "
                  "torch.distributed weight group has a fixed membership")
            check(self.vllm.num_engines == 1, "--vllm.num_engines",
                  "starts local replicas, which registry mode never does: start more "
                  "`quartet serve rollout --registry URL` (compose: --scale rollout=N)")
        check(not (self.ckpt.load_enable and self.ckpt.disable_ds), "--ckpt.load_enable",
              "cannot resume with --ckpt.disable_ds (no resumable checkpoints are written)")
        check(self.restart.min_rollout_replicas <= max(self.vllm.num_engines,
                                                       len(self.vllm.address)),
              "--restart.min_rollout_replicas",
              f"{self.restart.min_rollout_replicas} is more than the rollout replicas")
        if self.ray.address:
            check(self.launch.launcher == "ray", "--ray.address", "needs --launcher ray")
        if self.cluster.registry:
            check(self.launch.launcher == "local", "--launcher",
                  "registry mode starts no services, so nothing is placed; drop --launcher ray")
        self._check_sleep()
        self._check_placement()
        group = ("rloo", "group_norm", "dr_grpo", "reinforce_baseline")
        if self.algo.advantage.estimator in group:
            check(self.rollout.n_samples_per_prompt > 1, "--rollout.n_samples_per_prompt",
                  f"must be > 1 for --algo.advantage.estimator "
                  f"{self.algo.advantage.estimator} (it compares samples of one prompt)")

    def _check_sleep(self) -> None:
        """--vllm.enable_sleep and --ref.enable_sleep only where releasing is exact."""
        if self.vllm.enable_sleep:
            check(not self.train.async_enable, "--vllm.enable_sleep",
                  "cannot go with --train.async_enable: the rollout engines generate the next "
                  "batch while the actor trains, so they never wait between phases")
            check(self.vllm.backend != "hf", "--vllm.enable_sleep",
                  "needs the vLLM backend (Hugging Face generate cannot release its weights)")
            check(not self.train.colocate_all_models, "--vllm.enable_sleep",
                  "cannot go with --train.colocate_all_models, which already puts the engines "
                  "to sleep (level 1: weights kept in CPU memory) whenever they are idle")
        if self.ref.enable_sleep:
            check(self.needs_reference, "--ref.enable_sleep",
                  "this run has no reference (--algo.kl.init_coef 0)")
            check(self.ds.zero_stage != 3, "--ref.enable_sleep",
                  "cannot go with --ds.zero_stage 3: the reference's weights are then "
                  "partitioned by DeepSpeed, and releasing handles whole weights only")
            check(self.ref.num_nodes * self.ref.num_gpus_per_node == 1, "--ref.enable_sleep",
                  "handles a reference of one rank only (--ref.num_nodes x "
                  "--ref.num_gpus_per_node must be 1)")
            check(not self.ref.offload, "--ref.enable_sleep",
                  "cannot go with --ref.offload (which already moves an accelerator's "
                  "reference to CPU memory between calls)")

    def _check_placement(self) -> None:
        """The per-role device flags and colocation options must describe a placement."""
        from quartet.launch.placement import PlacementError
        from services.coordinator.placement import ppo_placement

        try:
            ppo_placement(self)
        except PlacementError as exc:
            flag, _, reason = str(exc).partition(": ")
            raise ConfigError(flag, reason) from None

    @property
    def needs_critic(self) -> bool:
        return self.algo.advantage.estimator == "gae"

    @property
    def needs_reference(self) -> bool:
        return self.algo.kl.init_coef > 0

    @property
    def steps_per_iteration(self) -> int:
        rows = self.rollout.batch_size * self.rollout.n_samples_per_prompt
        return rows // self.train.batch_size * self.train.max_epochs
