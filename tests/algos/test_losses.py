import math

import pytest
import torch

from quartet.algos.losses import (
    DPOLossOutput,
    PolicyLossOutput,
    ValueLossOutput,
    aggregate_loss,
    dpo_loss,
    entropy_from_logits,
    kl_loss,
    pairwise_rm_loss,
    policy_loss,
    sft_loss,
    token_logprobs,
    value_loss,
)


def softplus(x):
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- aggregate


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0], [70.0, 80.0, 90.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("token_mean", (1 + 2 + 3 + 4) / 4),
        ("sequence_mean", (2 + 4) / 2),  # empty third row does not count
        ("seq_mean_token_sum", (6 + 4) / 2),
        ("seq_mean_token_sum_norm", (6 / 3 + 4 / 3) / 2),
    ],
)
def test_aggregate_loss_reductions(reduction, expected):
    assert aggregate_loss(LOSS, MASK, reduction).item() == pytest.approx(expected)


def test_aggregate_loss_norm_length_and_left_padding():
    out = aggregate_loss(LOSS, MASK, "seq_mean_token_sum_norm", norm_length=10)
    assert out.item() == pytest.approx((0.6 + 0.4) / 2)
    left = torch.tensor([[1.0, 2.0, 3.0], [50.0, 60.0, 4.0]])
    left_mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    assert aggregate_loss(left, left_mask, "sequence_mean").item() == pytest.approx(3.0)


def test_aggregate_loss_all_masked_is_zero_with_zero_grad():
    for reduction in (
        "token_mean",
        "sequence_mean",
        "seq_mean_token_sum",
        "seq_mean_token_sum_norm",
    ):
        loss = torch.full((2, 3), float("inf"), requires_grad=True)
        out = aggregate_loss(loss, torch.zeros(2, 3), reduction)
        out.backward()
        assert out.item() == 0.0
        assert torch.equal(loss.grad, torch.zeros(2, 3))


def test_aggregate_loss_errors():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate_loss(LOSS, MASK, "mean")
    with pytest.raises(ValueError):
        aggregate_loss(LOSS, MASK[:2], "token_mean")


# ----------------------------------------------------------------------------- logits


def ref_logprob(row, label, temperature=1.0):
    z = [x / temperature for x in row]
    lse = math.log(sum(math.exp(x) for x in z))
    return z[label] - lse


def test_token_logprobs_hand_computed_and_not_in_place():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[-1.0, 5.0, 2.0], [3.0, 1.0, 0.5]]])
    labels = torch.tensor([[2, 1], [0, 0]])
    before = logits.clone()
    for temp in (1.0, 2.0):
        out = token_logprobs(logits, labels, temperature=temp)
        expected = [
            [ref_logprob(logits[b, s].tolist(), int(labels[b, s]), temp) for s in range(2)]
            for b in range(2)
        ]
        torch.testing.assert_close(out, torch.tensor(expected))
    assert torch.equal(logits, before)
    assert token_logprobs(logits, labels)[0, 1].item() == pytest.approx(-math.log(3))
    ignored = token_logprobs(logits, torch.tensor([[2, -100], [0, -100]]))
    assert ignored[0, 1].item() == 0.0 and ignored[1, 1].item() == 0.0
    assert ignored[0, 0].item() == pytest.approx(ref_logprob([1.0, 2.0, 3.0], 2))


def test_token_logprobs_bf16_upcasts_and_grads_flow():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 3))
    out = token_logprobs(logits, labels)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # gradient of log softmax at the label: onehot - softmax
    expected = torch.nn.functional.one_hot(labels, 7) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected)
    low = token_logprobs(logits.detach().bfloat16(), labels)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, out.detach(), atol=0.05, rtol=0.0)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    out = entropy_from_logits(logits)
    torch.testing.assert_close(out, torch.tensor([[math.log(4), 0.0]]), atol=1e-6, rtol=0)
    p = [0.5, 0.25, 0.25]
    logits = torch.tensor([[[math.log(x) for x in p]]])
    h = -sum(x * math.log(x) for x in p)
    assert entropy_from_logits(logits).item() == pytest.approx(h, rel=1e-6)
    # temperature 2 flattens: entropy of softmax(log p / 2) ~ sqrt(p) normalised
    q = [math.sqrt(x) for x in p]
    q = [x / sum(q) for x in q]
    hq = -sum(x * math.log(x) for x in q)
    assert entropy_from_logits(logits, temperature=2.0).item() == pytest.approx(hq, rel=1e-6)


# ----------------------------------------------------------------------------- SFT / RM / DPO


def test_sft_loss_token_mean_and_all_masked():
    logprobs = torch.tensor([[-1.0, -2.0, float("-inf")], [float("-inf"), -3.0, -6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert sft_loss(logprobs, mask).item() == pytest.approx((1 + 2 + 3 + 6) / 4)
    lp = torch.full((2, 2), float("-inf"), requires_grad=True)
    loss = sft_loss(lp, torch.zeros(2, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros(2, 2))


def test_pairwise_rm_loss_sigmoid_logexp_margin():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 1.0])
    # diff = [1, -1]: -log sigmoid(d) = log(1 + exp(-d))
    expected = (softplus(-1.0) + softplus(1.0)) / 2  # 0.8132617
    assert pairwise_rm_loss(chosen, rejected).item() == pytest.approx(expected)
    assert pairwise_rm_loss(chosen, rejected, loss_type="logexp").item() == pytest.approx(expected)
    margin = torch.tensor([0.5, 0.5])
    expected_m = (softplus(-0.5) + softplus(1.5)) / 2  # 1.087745
    for lt in ("sigmoid", "logexp"):
        loss = pairwise_rm_loss(chosen, rejected, margin=margin, loss_type=lt)
        assert loss.item() == pytest.approx(expected_m)
    loss.backward()
    assert torch.isfinite(chosen.grad).all() and chosen.grad[0] < 0
    with pytest.raises(ValueError, match="sigmoid"):
        pairwise_rm_loss(chosen, rejected, loss_type="hinge")


def test_dpo_ipo_cdpo_values():
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    beta = 0.1
    # h = (-1 - -3) - (-2 - -2) = 2; beta * h = 0.2
    out = dpo_loss(pc, pr, rc, rr, beta)
    assert isinstance(out, DPOLossOutput)
    assert out.loss.item() == pytest.approx(softplus(-0.2))  # 0.598139
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1]))  # 0.1 * (-1 + 2)
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1]))  # 0.1 * (-3 + 2)
    assert not out.chosen_rewards.requires_grad
    out.loss.backward()
    assert pc.grad.item() < 0  # raising the chosen log-prob lowers the loss

    cdpo = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.1)
    assert cdpo.loss.item() == pytest.approx(0.9 * softplus(-0.2) + 0.1 * softplus(0.2))
    ipo = dpo_loss(pc, pr, rc, rr, beta, ipo=True)
    assert ipo.loss.item() == pytest.approx((2 - 1 / (2 * beta)) ** 2)  # (2 - 5)^2 = 9
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, rc, rr, 0.0)


# ----------------------------------------------------------------------------- policy loss


def policy_case(ratios, advantages):
    """One token per row: logprobs - old_logprobs = log(ratio)."""
    old = torch.full((len(ratios), 1), -1.0)
    logp = (old + torch.tensor([[math.log(r)] for r in ratios])).requires_grad_(True)
    adv = torch.tensor([[a] for a in advantages])
    return logp, old, adv, torch.ones(len(ratios), 1)


def test_policy_loss_symmetric_clip_branches():
    # A=+1, rho=1.5: min(1.5, 1.2) = 1.2 (clipped)      -> -1.2
    # A=+1, rho=0.5: min(0.5, 0.8) = 0.5                 -> -0.5
    # A=-1, rho=1.5: min(-1.5, -1.2) = -1.5              ->  1.5
    # A=-1, rho=0.5: min(-0.5, -0.8) = -0.8 (clipped)    ->  0.8
    logp, old, adv, mask = policy_case([1.5, 0.5, 1.5, 0.5], [1.0, 1.0, -1.0, -1.0])
    out = policy_loss(logp, old, adv, mask)
    assert isinstance(out, PolicyLossOutput)
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    assert out.dual_clip_fraction.item() == 0.0
    assert out.ratio_mean.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(-(2 * math.log(1.5) + 2 * math.log(0.5)) / 4)
    out.loss.backward()
    # d/dlogp of -rho*A/4 is -rho*A/4 on unclipped tokens, 0 on clipped ones
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [-0.125], [0.375], [0.0]]))


def test_policy_loss_asymmetric_clip():
    logp, old, adv, mask = policy_case([1.5, 1.25, 0.5], [1.0, 1.0, -1.0])
    out = policy_loss(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    # 1.5 -> clipped at 1.28; 1.25 inside [0.8, 1.28]; 0.5 with A<0 -> clipped at 0.8
    assert out.loss.item() == pytest.approx((-1.28 - 1.25 + 0.8) / 3)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    sym = policy_loss(logp, old, adv, mask)
    assert sym.loss.item() == pytest.approx((-1.2 - 1.2 + 0.8) / 3)


def test_policy_loss_dual_clip():
    # A=-1, rho=5: min(-5, -1.2) = -5; dual clip 3: max(-5, -3) = -3 -> loss 3
    # A=-1, rho=1.5: min = -1.5 > -3, dual bound not taken -> 1.5
    # A=+2, rho=5: dual clip never applies to positive A: min(10, 2.4) -> -2.4
    logp, old, adv, mask = policy_case([5.0, 1.5, 5.0], [-1.0, -1.0, 2.0])
    out = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert out.loss.item() == pytest.approx((3.0 + 1.5 - 2.4) / 3)
    assert out.dual_clip_fraction.item() == pytest.approx(1 / 3)
    plain = policy_loss(logp, old, adv, mask)
    assert plain.loss.item() == pytest.approx((5.0 + 1.5 - 2.4) / 3)
    out.loss.backward()
    assert logp.grad[0].item() == 0.0  # the dual-clipped token is constant in logp
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, old, adv, mask, dual_clip=1.0)


def test_policy_loss_is_weights():
    logp, old, adv, mask = policy_case([1.0, 1.0], [1.0, 1.0])
    w = torch.tensor([[2.0], [0.5]])
    out = policy_loss(logp, old, adv, mask, is_weights=w)
    assert out.loss.item() == pytest.approx((-2.0 - 0.5) / 2)


def test_policy_loss_left_padding_equals_right_and_garbage_is_safe():
    torch.manual_seed(0)
    lp = torch.randn(2, 3) * 0.1 - 1
    old = torch.randn(2, 3) * 0.1 - 1
    adv = torch.randn(2, 3)
    right = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # same valid tokens, left padded, with huge garbage at the padding
    idx = torch.tensor([[2, 0, 1], [1, 2, 0]])
    lp_l = lp.gather(1, idx).clone()
    old_l, adv_l = old.gather(1, idx).clone(), adv.gather(1, idx).clone()
    left = right.gather(1, idx)
    lp_l[~left.bool()], old_l[~left.bool()] = 1e4, -1e4
    lp_l = lp_l.requires_grad_(True)
    for reduction in ("token_mean", "sequence_mean"):
        a = policy_loss(lp, old, adv, right, reduction=reduction)
        b = policy_loss(lp_l, old_l, adv_l, left, reduction=reduction)
        assert a.loss.item() == pytest.approx(b.loss.item())
    b.loss.backward()
    assert torch.isfinite(lp_l.grad).all()


def test_policy_loss_all_masked_row_no_nan_grads():
    logp = torch.tensor([[-1.0, -2.0], [float("-inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0], [float("nan"), 3.0]])
    adv = torch.tensor([[1.0, -1.0], [float("nan"), 1.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    out = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1], torch.zeros(2))
    empty = policy_loss(logp.detach(), old, adv, torch.zeros(2, 2))
    assert empty.loss.item() == 0.0 and empty.clip_fraction.item() == 0.0


# ----------------------------------------------------------------------------- value / KL loss


def test_value_loss_clipped_and_unclipped():
    # token 0: V=1.5, V_old=1.0, R=2.0: V_clip=1.2; max(0.25, 0.64) = 0.64 (clipped larger)
    # token 1: V=1.5, V_old=1.0, R=1.0: V_clip=1.2; max(0.25, 0.04) = 0.25
    values = torch.tensor([[1.5, 1.5, 0.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = value_loss(values, old, returns, mask, clip_eps=0.2)
    assert isinstance(out, ValueLossOutput)
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 0.25) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    out.loss.backward()
    # token 0 is clipped (no grad); token 1: d/dV 0.5 * (V - R)^2 / 2 = (1.5 - 1) / 2
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.25, 0.0]]))
    plain = value_loss(values, old, returns, mask, clip_eps=None)
    assert plain.loss.item() == pytest.approx(0.5 * (0.25 + 0.25) / 2)
    assert plain.clip_fraction.item() == 0.0


def test_kl_loss_reduces_approx_kl():
    logp = torch.tensor([[math.log(0.5), math.log(0.5), 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    k3 = 0.5 - 1 - math.log(0.5)  # first token; second has KL 0
    assert kl_loss(logp, ref, mask, "k3").item() == pytest.approx(k3 / 2)
    assert kl_loss(logp, ref, mask, "k1").item() == pytest.approx(math.log(2) / 2)
    loss = kl_loss(logp, ref, mask, "k2", reduction="seq_mean_token_sum")
    assert loss.item() == pytest.approx(0.5 * math.log(0.5) ** 2)
    loss.backward()
    assert torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("log_ratio", [40.0, 100.0, -40.0, -100.0])
@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_policy_loss_clamps_log_ratio_to_20_like_openrlhf(log_ratio, adv):
    """rho = exp(clamp(log_ratio, -20, 20)); past the clamp the loss is bounded, grads are 0."""
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    a = torch.tensor([[adv]])
    out = policy_loss(logp, old, a, mask)
    rho = math.exp(max(min(log_ratio, 20.0), -20.0))
    expected = -min(rho * adv, min(max(rho, 0.8), 1.2) * adv)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert abs(logp.grad.item()) < 1e9


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "seq_mean_token_sum",
                                       "seq_mean_token_sum_norm"])
def test_normalised_shares_add_up_to_the_whole_batch_loss(reduction):
    """Cut a mini-batch into uneven parts (micro-batches on data-parallel ranks): with the
    mini-batch's LossNormaliser the parts' losses sum to the loss of the whole, each part
    padded only to its own width."""
    from quartet.algos.losses import LossNormaliser, aggregate_loss

    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5, 1, 4, 2]
    width = max(lengths)
    loss = torch.randn(len(lengths), width, generator=g)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    whole = aggregate_loss(loss, mask, reduction)
    norm = LossNormaliser.of_lengths(lengths)
    assert (norm.num_tokens, norm.num_sequences, norm.max_length) == (15, 5, 5)
    shares = 0.0
    for rows in ([0, 1], [2], [3, 4, 5]):
        w = max(max(lengths[i] for i in rows), 1)
        shares += aggregate_loss(loss[rows, :w], mask[rows, :w], reduction, normaliser=norm)
    assert float(shares) == pytest.approx(float(whole), rel=1e-6, abs=1e-7)


def test_gspo_uses_the_sequence_ratio_and_sequence_mean():
    # row 0: log-ratios 0.2, -0.4 -> mean -0.1 -> rho = 0.904837 for both tokens (inside the clip)
    # row 1: log-ratio 0.5 -> rho = 1.648721, A = 1 -> clipped at 1.2
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.2, -0.4], [0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    out = policy_loss(logp, old, torch.ones(2, 2), mask, policy_loss_type="gspo")
    assert out.loss.item() == pytest.approx((-0.9048374180359595 - 1.2) / 2, rel=1e-6)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    out.loss.backward()
    # d/dlogp_t of -mean_rows(rho): row 0 has rho / 2 per token, halved by the row mean
    g = 0.9048374180359595 / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[-g, -g], [0.0, 0.0]]))


@pytest.mark.parametrize("gap", [40.0, 100.0, -40.0, -100.0])
def test_gspo_extreme_log_ratios_stay_finite(gap):
    logp = torch.tensor([[gap, gap]], requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[-1.0, -1.0]]),
                      torch.ones(1, 2, dtype=torch.bool), policy_loss_type="gspo")
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and torch.isfinite(logp.grad).all()


def test_kl_loss_unbiased_gradient_keeps_value_changes_gradient():
    # pi = 0.5, p_ref = 0.25, pi_old = 0.25: rho = 2, k1 = log 2, k3 = 0.5 - 1 + log 2
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    plain = kl_loss(logp, ref, mask, "k3")
    (g_plain,) = torch.autograd.grad(plain, logp)
    assert g_plain.item() == pytest.approx(0.5)  # 1 - p_ref / pi
    unbiased = kl_loss(logp, ref, mask, "k3", old_logprobs=ref, unbiased_gradient=True)
    assert unbiased.item() == pytest.approx(plain.item()) == pytest.approx(0.5 - 1 + math.log(2))
    (g,) = torch.autograd.grad(unbiased, logp)
    assert g.item() == pytest.approx(2 * math.log(2))  # rho * k1
    with pytest.raises(ValueError, match="old_logprobs"):
        kl_loss(logp, ref, mask, "k3", unbiased_gradient=True)


@pytest.mark.parametrize("gap", [40.0, 100.0, -40.0, -100.0])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_loss_unbiased_extreme_log_ratios_stay_finite(gap, est):
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    ref = logp.detach() - gap
    old = logp.detach() + gap
    out = kl_loss(logp, ref, torch.ones(1, 2), est, old_logprobs=old, unbiased_gradient=True)
    out.backward()
    assert math.isfinite(out.item()) and torch.isfinite(logp.grad).all()


def test_sft_loss_sequence_mean():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx(7 / 3)
    assert sft_loss(logp, mask, "sequence_mean").item() == pytest.approx((1.5 + 4) / 2)
    with pytest.raises(ValueError, match="token_mean, sequence_mean"):
        sft_loss(logp, mask, "seq_mean_token_sum")


# pi_c = -1, pi_r = -3, ref = -2 / -2: c = 1, r = -1, h = 2; lengths 2 and 4; beta = 0.5
DPO_ARGS = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
DPO_LENGTHS = dict(chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))


@pytest.mark.parametrize("loss_type, extra, expected", [
    ("sigmoid", {}, 0.31326168751822286),                        # log(1 + e^-1)
    ("hinge", {}, 0.0),                                           # relu(1 - 0.5 * 2)
    ("ipo", {}, 0.0625),                                          # (1/2 + 1/4 - 1)^2
    ("robust", {"label_smoothing": 0.1}, 0.1882616875182229),    # (.9*.31326 - .1*1.31326) / .8
    ("bco_pair", {"bco_delta": 0.2}, 0.9575412933539851),        # log(1+e^-0.3) + log(1+e^-0.7)
    ("sppo_hard", {}, 0.0),                                       # (1 - 1)^2 + (-1 + 1)^2
    ("apo_zero", {}, 0.7550813375962908),                        # (1 - sig(0.5)) + sig(-0.5)
    ("sigmoid_norm", {}, 0.52312326413984),                      # log(1 + e^-0.375)
])
def test_dpo_loss_family_hand_computed(loss_type, extra, expected):
    out = dpo_loss(*DPO_ARGS, beta=0.5, loss_type=loss_type, **DPO_LENGTHS, **extra)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # reward metrics: beta * summed log-ratio, whatever the loss normalises
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)


def test_dpo_sppo_hard_off_target():
    out = dpo_loss(*DPO_ARGS, beta=0.25, loss_type="sppo_hard")
    assert out.loss.item() == pytest.approx(2.0)  # (1 - 2)^2 + (-1 + 2)^2


def test_dpo_loss_type_errors():
    with pytest.raises(ValueError, match="hinge"):
        dpo_loss(*DPO_ARGS, beta=0.5, loss_type="nope")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(*DPO_ARGS, beta=0.5, loss_type="ipo", chosen_lengths=torch.tensor([2]))
