"""PPO mini-batches over the wire: round trips through row slices, and bad streams."""

import pytest
import torch

from quartet.algos.off_policy import ISCorrection
from quartet.codec import CodecError, RowBatch
from quartet.ppo.batch import (
    PolicyLossSettings,
    PolicyMiniBatch,
    ValueLossSettings,
    ValueMiniBatch,
)
from quartet.ppo.wire import (
    decode_policy_minibatch,
    decode_value_minibatch,
    encode_policy_minibatch,
    encode_value_minibatch,
)
from quartet.v1 import common_pb2


def _policy_mb(n=6, with_ref=True):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 50, (3 + i,), generator=g) for i in range(n)]
    plens = [2] * n
    resp = [r.numel() - 2 for r in rows]
    def f(k):
        return [torch.randn(k, generator=g) for k in resp]
    return PolicyMiniBatch(RowBatch(rows, plens), f(0), f(0), f(0) if with_ref else None,
                           None)


def test_policy_minibatch_round_trip_in_several_slices():
    mb = _policy_mb()
    loss = PolicyLossSettings(clip_eps_high=0.28, dual_clip=3.0, kl_coef=0.1)
    reqs = list(encode_policy_minibatch(mb, loss, common_pb2.RequestHeader(run_id="r"),
                                        max_bytes=80))
    assert len(reqs) > 1
    out, out_loss, header = decode_policy_minibatch(reqs, vocab_size=50)
    assert header.run_id == "r" and out_loss == loss
    assert [r.tolist() for r in out.batch.rows] == [r.tolist() for r in mb.batch.rows]
    for a, b in zip(out.advantages, mb.advantages, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(out.ref_logprobs, mb.ref_logprobs, strict=True):
        assert torch.equal(a, b)


def test_per_token_count_mismatch_names_the_field():
    mb = _policy_mb()
    mb.advantages[3] = torch.zeros(1)
    reqs = list(encode_policy_minibatch(mb, PolicyLossSettings(), common_pb2.RequestHeader()))
    with pytest.raises(CodecError, match="advantages.*row 3 has 1 values"):
        decode_policy_minibatch(reqs)


def test_kl_in_loss_requires_reference_logprobs():
    mb = _policy_mb(with_ref=False)
    reqs = list(encode_policy_minibatch(mb, PolicyLossSettings(kl_coef=0.1),
                                        common_pb2.RequestHeader()))
    with pytest.raises(CodecError, match="ref_logprobs"):
        decode_policy_minibatch(reqs)


def test_bad_loss_settings_and_out_of_order_slices():
    mb = _policy_mb()
    reqs = list(encode_policy_minibatch(mb, PolicyLossSettings(dual_clip=0.5),
                                        common_pb2.RequestHeader(), max_bytes=80))
    with pytest.raises(CodecError, match="dual_clip"):
        decode_policy_minibatch(reqs)
    reqs = list(encode_policy_minibatch(mb, PolicyLossSettings(), common_pb2.RequestHeader(),
                                        max_bytes=80))
    with pytest.raises(CodecError, match="in order"):
        decode_policy_minibatch([reqs[1], reqs[0], *reqs[2:]])
    with pytest.raises(CodecError, match="total_rows"):
        decode_policy_minibatch(reqs[:-1])


def test_gspo_is_correction_and_unbiased_kl_cross_the_wire():
    mb = _policy_mb()
    mb.rollout_logprobs = [t - 0.1 for t in mb.old_logprobs]
    loss = PolicyLossSettings(
        kl_coef=0.1, policy_loss_type="gspo", kl_unbiased_gradient=True,
        is_correction=ISCorrection(level="seq", gating="binary_kl", threshold=(0.0, 0.005)))
    reqs = list(encode_policy_minibatch(mb, loss, common_pb2.RequestHeader(), max_bytes=80))
    out, out_loss, _ = decode_policy_minibatch(reqs)
    assert out_loss == loss
    for a, b in zip(out.rollout_logprobs, mb.rollout_logprobs, strict=True):
        assert torch.equal(a, b)
    mb.rollout_logprobs = None  # the correction needs the sampler's log-probs
    with pytest.raises(CodecError, match="rollout_logprobs"):
        decode_policy_minibatch(list(encode_policy_minibatch(mb, loss,
                                                             common_pb2.RequestHeader())))
    reqs = list(encode_policy_minibatch(mb, PolicyLossSettings(), common_pb2.RequestHeader()))
    reqs[0].loss.is_correction_level = "token"
    reqs[0].loss.is_correction_mode = "clip"
    reqs[0].loss.is_correction_gating = "tv"
    with pytest.raises(CodecError, match="is_correction"):
        decode_policy_minibatch(reqs)


def test_value_minibatch_round_trip():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 50, (4,), generator=g) for _ in range(3)]
    mb = ValueMiniBatch(RowBatch(rows, [1, 2, 3]), [torch.randn(k) for k in (3, 2, 1)],
                        [torch.randn(k) for k in (3, 2, 1)])
    out, loss, _ = decode_value_minibatch(
        encode_value_minibatch(mb, ValueLossSettings(clip_eps=0.3), common_pb2.RequestHeader()))
    assert loss.clip_eps == pytest.approx(0.3)
    for a, b in zip(out.returns, mb.returns, strict=True):
        assert torch.equal(a, b)


def test_one_pass_minibatch_travels_without_old_logprobs():
    mb = _policy_mb()
    mb.old_logprobs = None
    loss = PolicyLossSettings(kl_coef=0.1, old_logprobs_from_forward=True)
    reqs = list(encode_policy_minibatch(mb, loss, common_pb2.RequestHeader(), max_bytes=80))
    assert not any(r.HasField("old_logprobs") for r in reqs)
    out, out_loss, _ = decode_policy_minibatch(reqs, vocab_size=50)
    assert out.old_logprobs is None and out_loss.old_logprobs_from_forward
    with pytest.raises(ValueError, match="old_logprobs"):
        list(encode_policy_minibatch(mb, PolicyLossSettings(), common_pb2.RequestHeader()))


def test_policy_loss_settings_survive_asdict_round_trip():
    """The PPO loop rebuilds the settings with `**asdict(...)` (KL in the loss)."""
    from dataclasses import asdict

    loss = PolicyLossSettings(is_correction=ISCorrection(level="token", mode="clip",
                                                         threshold=2.0))
    again = PolicyLossSettings(**{**asdict(loss), "kl_coef": 0.1})
    assert again.is_correction == loss.is_correction and again.is_correction.enabled


def test_ptx_rows_cross_the_wire_sliced_like_the_batch():
    mb = _policy_mb()
    mb.ptx = RowBatch([torch.arange(1, 4 + i) for i in range(len(mb.batch))],
                      [1] * len(mb.batch))
    loss = PolicyLossSettings(ptx_coef=0.5)
    reqs = list(encode_policy_minibatch(mb, loss, common_pb2.RequestHeader(), max_bytes=80))
    assert len(reqs) > 1
    out, out_loss, _ = decode_policy_minibatch(reqs)
    assert out_loss.ptx_coef == 0.5
    assert [r.tolist() for r in out.ptx.rows] == [r.tolist() for r in mb.ptx.rows]
    mb.ptx = None
    with pytest.raises(CodecError, match="ptx_batch"):
        decode_policy_minibatch(list(encode_policy_minibatch(mb, loss,
                                                             common_pb2.RequestHeader())))
