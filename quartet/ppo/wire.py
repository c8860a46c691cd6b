"""PPO mini-batches <-> the actor and critic TrainStep request streams.

The coordinator encodes a mini-batch into row slices (each ~chunk size); the service decodes
and checks every slice, then reassembles the mini-batch before one optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from quartet.algos.losses import POLICY_LOSS_TYPES
from quartet.algos.off_policy import ISCorrection
from quartet.codec import (
    CodecError,
    check_per_token,
    decode_token_batch,
    encode_token_batch,
    ragged_from_proto,
    ragged_to_proto,
    token_batch_slices,
)
from quartet.codec.chunks import DEFAULT_CHUNK_BYTES
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from quartet.v1 import actor_pb2, common_pb2, critic_pb2

KL_ESTIMATORS = ("k1", "k2", "k3")


def _f32(rows: list[torch.Tensor]) -> common_pb2.Ragged:
    return ragged_to_proto(rows, dtype=torch.float32)


def policy_loss_to_proto(s: PolicyLossSettings) -> actor_pb2.PolicyLossConfig:
    return actor_pb2.PolicyLossConfig(
        clip_eps_low=s.clip_eps_low, clip_eps_high=s.clip_eps_high,
        dual_clip=s.dual_clip or 0.0, entropy_coef=s.entropy_coef, kl_coef=s.kl_coef,
        kl_estimator=s.kl_estimator, reduction=s.reduction, temperature=s.temperature,
        old_logprobs_from_forward=s.old_logprobs_from_forward,
        policy_loss_type=s.policy_loss_type, is_correction_level=s.is_correction.level,
        is_correction_mode=s.is_correction.mode, is_correction_gating=s.is_correction.gating,
        is_correction_low=s.is_correction.threshold[0],
        is_correction_high=s.is_correction.threshold[1],
        kl_unbiased_gradient=s.kl_unbiased_gradient, ptx_coef=s.ptx_coef,
    )


def policy_loss_from_proto(msg: actor_pb2.PolicyLossConfig) -> PolicyLossSettings:
    f = "loss"
    if msg.clip_eps_low < 0 or msg.clip_eps_high < 0:
        raise CodecError(f"{f}.clip_eps_low/high", "clip ranges must be >= 0")
    if msg.dual_clip and msg.dual_clip <= 1.0:
        raise CodecError(f"{f}.dual_clip", f"must be > 1 (or 0 to disable), got {msg.dual_clip}")
    if msg.kl_estimator and msg.kl_estimator not in KL_ESTIMATORS:
        raise CodecError(f"{f}.kl_estimator",
                         f"expected one of {', '.join(KL_ESTIMATORS)}, got {msg.kl_estimator!r}")
    if msg.temperature < 0:
        raise CodecError(f"{f}.temperature", f"must be > 0, got {msg.temperature}")
    if msg.ptx_coef < 0:
        raise CodecError(f"{f}.ptx_coef", f"must be >= 0, got {msg.ptx_coef}")
    if msg.policy_loss_type and msg.policy_loss_type not in POLICY_LOSS_TYPES:
        raise CodecError(f"{f}.policy_loss_type", f"expected one of "
                         f"{', '.join(POLICY_LOSS_TYPES)}, got {msg.policy_loss_type!r}")
    try:
        correction = ISCorrection(
            level=msg.is_correction_level or "off", mode=msg.is_correction_mode or "mask",
            gating=msg.is_correction_gating or "ratio",
            threshold=(msg.is_correction_low, msg.is_correction_high),
        ) if msg.is_correction_level not in ("", "off") else ISCorrection()
    except ValueError as exc:
        raise CodecError(f"{f}.is_correction_*", str(exc)) from None
    return PolicyLossSettings(
        clip_eps_low=msg.clip_eps_low, clip_eps_high=msg.clip_eps_high,
        dual_clip=msg.dual_clip or None, entropy_coef=msg.entropy_coef, kl_coef=msg.kl_coef,
        kl_estimator=msg.kl_estimator or "k3", reduction=msg.reduction or "token_mean",
        old_logprobs_from_forward=msg.old_logprobs_from_forward,
        temperature=msg.temperature or 1.0, policy_loss_type=msg.policy_loss_type or "ppo",
        is_correction=correction, kl_unbiased_gradient=msg.kl_unbiased_gradient,
        ptx_coef=msg.ptx_coef,
    )


def encode_policy_minibatch(
    mb: PolicyMiniBatch, loss: PolicyLossSettings, header: common_pb2.RequestHeader,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[actor_pb2.ActorTrainStepRequest]:
    if (mb.old_logprobs is None) != loss.old_logprobs_from_forward:
        raise ValueError("old_logprobs: send them, or set loss.old_logprobs_from_forward "
                         "(exactly one of the two)")
    extra = 4 + (4 if mb.old_logprobs is not None else 0) + (
        4 if mb.ref_logprobs is not None else 0) + (
        4 if mb.rollout_logprobs is not None else 0)
    first = True
    for part in token_batch_slices(mb.batch, max_bytes, extra_bytes_per_token=extra):
        s, e = part.row_offset, part.row_offset + len(part)
        sub = mb.slice(s, e)
        req = actor_pb2.ActorTrainStepRequest(
            header=header, batch=encode_token_batch(part), advantages=_f32(sub.advantages),
            total_rows=len(mb.batch),
        )
        if sub.old_logprobs is not None:
            req.old_logprobs.CopyFrom(_f32(sub.old_logprobs))
        if sub.ref_logprobs is not None:
            req.ref_logprobs.CopyFrom(_f32(sub.ref_logprobs))
        if sub.rollout_logprobs is not None:
            req.rollout_logprobs.CopyFrom(_f32(sub.rollout_logprobs))
        if sub.ptx is not None:
            req.ptx_batch.CopyFrom(encode_token_batch(sub.ptx))
        if first:
            req.loss.CopyFrom(policy_loss_to_proto(loss))
            first = False
        yield req


def _collect(requests: Iterable, what: str):
    """Reads all slices; checks they tile [0, total_rows) in order."""
    out = []
    expected = 0
    total = None
    for req in requests:
        total = req.total_rows if total is None else total
        if req.total_rows != total:
            raise CodecError("total_rows", f"changed between slices ({total} -> {req.total_rows})")
        if req.batch.row_offset != expected:
            raise CodecError("batch.row_offset",
                             f"expected {expected} (slices must arrive in order), got "
                             f"{req.batch.row_offset}")
        out.append(req)
        expected += len(req.batch.prompt_lengths)
    if not out:
        raise CodecError(what, "empty request stream")
    if expected != total:
        raise CodecError("total_rows", f"says {total} rows but the slices carried {expected}")
    return out


def decode_policy_minibatch(
    requests: Iterable[actor_pb2.ActorTrainStepRequest], vocab_size: int | None = None,
    max_len: int | None = None,
) -> tuple[PolicyMiniBatch, PolicyLossSettings, common_pb2.RequestHeader]:
    reqs = _collect(requests, "ActorTrainStepRequest")
    loss = policy_loss_from_proto(reqs[0].loss)
    parts = []
    for req in reqs:
        batch = decode_token_batch(req.batch, "batch", vocab_size, max_len)
        lengths = batch.response_lengths()
        old = None
        if not loss.old_logprobs_from_forward:
            old = ragged_from_proto(req.old_logprobs, "old_logprobs")
            check_per_token(old, lengths, "old_logprobs")
        adv = ragged_from_proto(req.advantages, "advantages")
        check_per_token(adv, lengths, "advantages")
        ref = roll = None
        if loss.kl_coef > 0:
            if not req.HasField("ref_logprobs"):
                raise CodecError("ref_logprobs", "required when loss.kl_coef > 0")
            ref = ragged_from_proto(req.ref_logprobs, "ref_logprobs")
            check_per_token(ref, lengths, "ref_logprobs")
        if loss.is_correction.enabled:
            if not req.HasField("rollout_logprobs"):
                raise CodecError("rollout_logprobs",
                                 "required when loss.is_correction_level is token or seq")
            roll = ragged_from_proto(req.rollout_logprobs, "rollout_logprobs")
            check_per_token(roll, lengths, "rollout_logprobs")
        ptx = None
        if loss.ptx_coef > 0:
            if not req.HasField("ptx_batch"):
                raise CodecError("ptx_batch", "required when loss.ptx_coef > 0")
            ptx = decode_token_batch(req.ptx_batch, "ptx_batch", vocab_size, max_len)
            if len(ptx) != len(batch):
                raise CodecError("ptx_batch", f"has {len(ptx)} rows for the slice's "
                                 f"{len(batch)} policy rows")
        parts.append(PolicyMiniBatch(batch, old, adv, ref, roll, ptx))
    return PolicyMiniBatch.concat(parts), loss, reqs[0].header


def encode_value_minibatch(
    mb: ValueMiniBatch, loss: ValueLossSettings, header: common_pb2.RequestHeader,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[critic_pb2.CriticTrainStepRequest]:
    first = True
    for part in token_batch_slices(mb.batch, max_bytes, extra_bytes_per_token=8):
        s, e = part.row_offset, part.row_offset + len(part)
        sub = mb.slice(s, e)
        req = critic_pb2.CriticTrainStepRequest(
            header=header, batch=encode_token_batch(part), old_values=_f32(sub.old_values),
            returns=_f32(sub.returns), total_rows=len(mb.batch),
        )
        if first:
            req.loss.CopyFrom(critic_pb2.ValueLossConfig(clip_eps=loss.clip_eps or 0.0))
            first = False
        yield req


def decode_value_minibatch(
    requests: Iterable[critic_pb2.CriticTrainStepRequest], vocab_size: int | None = None,
    max_len: int | None = None,
) -> tuple[ValueMiniBatch, ValueLossSettings, common_pb2.RequestHeader]:
    reqs = _collect(requests, "CriticTrainStepRequest")
    if reqs[0].loss.clip_eps < 0:
        raise CodecError("loss.clip_eps", f"must be >= 0, got {reqs[0].loss.clip_eps}")
    loss = ValueLossSettings(clip_eps=reqs[0].loss.clip_eps or None)
    parts = []
    for req in reqs:
        batch = decode_token_batch(req.batch, "batch", vocab_size, max_len)
        lengths = batch.response_lengths()
        old = ragged_from_proto(req.old_values, "old_values")
        ret = ragged_from_proto(req.returns, "returns")
        check_per_token(old, lengths, "old_values")
        check_per_token(ret, lengths, "returns")
        parts.append(ValueMiniBatch(batch, old, ret))
    return ValueMiniBatch.concat(parts), loss, reqs[0].header
