"""The PPO job's placement: which services `quartet ppo` starts, and what each asks for.

The flags are OpenRLHF's in hierarchical form (`--actor.num_nodes`,
`--actor.num_gpus_per_node`, the same for `--critic.*`, `--ref.*`, `--reward.*`;
`--vllm.num_engines`, `--vllm.tensor_parallel_size`; `--train.colocate_*`). The layout
itself is `quartet.launch.placement.plan_placement`; this module only names the services.
"""

from __future__ import annotations

from quartet.launch.placement import (
    PlacementPlan,
    RankPlacement,
    ServiceDemand,
    ServicePlacement,
    plan_placement,
)
from services.coordinator.config import PPOJobConfig


def reward_service_names(cfg: PPOJobConfig) -> tuple[list[str], list[str]]:
    """(reward models, other reward sources started here) as service names, in the order
    of --reward.weights: models, funcs, remote urls."""
    r = cfg.reward
    models = [f"reward{i}" for i in range(len(r.model_name_or_path))]
    others = [f"reward{len(models) + i}" for i in range(len(r.func) + len(r.remote_url))]
    return models, others


def ppo_demands(cfg: PPOJobConfig) -> list[ServiceDemand]:
    """One demand per service this run starts (roles with an --<role>.address are not)."""
    demands: list[ServiceDemand] = []
    if not cfg.actor.address:
        a = cfg.actor
        demands.append(ServiceDemand("actor", "actor", a.num_nodes, a.num_gpus_per_node,
                                     flag="--actor"))
    if cfg.needs_critic and not cfg.critic.address:
        c = cfg.critic
        demands.append(ServiceDemand("critic", "critic", c.num_nodes, c.num_gpus_per_node,
                                     flag="--critic"))
    if cfg.needs_reference and not cfg.ref.address:
        r = cfg.ref
        demands.append(ServiceDemand("reference", "reference", r.num_nodes,
                                     r.num_gpus_per_node, flag="--ref"))
    models, others = reward_service_names(cfg)
    rw = cfg.reward
    demands += [ServiceDemand(n, "reward", rw.num_nodes, rw.num_gpus_per_node, flag="--reward")
                for n in models]
    demands += [ServiceDemand(n, "reward", 1, 0, flag="--reward") for n in others]
    if not cfg.vllm.address:
        tp = cfg.vllm.tensor_parallel_size
        demands += [ServiceDemand(f"rollout{i}", "rollout", 1, tp, tp, flag="--vllm")
                    for i in range(cfg.vllm.num_engines)]
    return demands


def ppo_colocation(cfg: PPOJobConfig) -> dict[str, list[str]]:
    """Groups of services sharing devices, keyed by the --train.colocate_* flag."""
    models, _ = reward_service_names(cfg)
    engines = [] if cfg.vllm.address else [f"rollout{i}" for i in range(cfg.vllm.num_engines)]
    t = cfg.train
    if t.colocate_all_models:
        return {"--train.colocate_all_models": ["actor", "reference", "critic", *models,
                                                *engines]}
    groups = {}
    if t.colocate_actor_ref:
        groups["--train.colocate_actor_ref"] = ["actor", "reference"]
    if t.colocate_critic_reward:
        groups["--train.colocate_critic_reward"] = ["critic", *models]
    return groups


def ppo_placement(cfg: PPOJobConfig, devices_per_node: int | None = None,
                  device_kind: str = "cpu") -> PlacementPlan:
    """The run's plan; services given by address appear as `external` with one rank."""
    plan = plan_placement(ppo_demands(cfg), ppo_colocation(cfg), devices_per_node,
                          device_kind)
    external = []
    for name, role, addr in external_services(cfg):
        external.append(ServicePlacement(name, role, "external", 0.0,
                                         (RankPlacement(0, "external", (), 0, addr),)))
    return PlacementPlan(plan.device_kind, plan.devices_per_node, plan.pools,
                         plan.services + tuple(external))


def external_services(cfg: PPOJobConfig) -> list[tuple[str, str, str]]:
    """(name, role, address) of every service this run connects to but does not start."""
    out = []
    if cfg.actor.address:
        out.append(("actor", "actor", cfg.actor.address))
    if cfg.needs_critic and cfg.critic.address:
        out.append(("critic", "critic", cfg.critic.address))
    if cfg.needs_reference and cfg.ref.address:
        out.append(("reference", "reference", cfg.ref.address))
    models, others = reward_service_names(cfg)
    first = len(models) + len(others)
    out += [(f"reward{first + i}", "reward", a) for i, a in enumerate(cfg.reward.address)]
    out += [(f"rollout{i}", "rollout", a) for i, a in enumerate(cfg.vllm.address)]
    return out
