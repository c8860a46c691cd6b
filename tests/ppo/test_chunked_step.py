"""The actor's PPO step from hidden states (chunked log-probs, no `[R, T, V]` logits) takes
the step the logits path takes: the same losses, gradient norm and updated weights on the
tiny Llama, in the shared-prefix and the plain layouts, with and without an entropy bonus."""

import pytest
import torch

from quartet.ppo.batch import PolicyLossSettings, PolicyMiniBatch
from tests.ppo.test_shared_prompts import _config, _rows
from tests.trainers.dist_world import world_of_one


@pytest.fixture(scope="module", autouse=True)
def world():
    """A world of one torn down after this module (see tests/ppo/test_passes.py)."""
    yield from world_of_one()


@pytest.mark.parametrize(("share_prefix", "entropy_coef", "temperature"),
                         [(True, 0.0, 1.0), (True, 0.01, 0.7), (False, 0.01, 1.0)])
def test_step_from_hidden_states_equals_the_logits_step(tiny_model_path, share_prefix,
                                                        entropy_coef, temperature):
    from services.actor.actor import Actor

    batch = _rows()
    chunked, logits = Actor(_config(tiny_model_path, 3)), Actor(_config(tiny_model_path, 3))
    assert chunked.engine.output_weight() is not None  # a Llama: the chunked path applies
    # the other actor takes the logits path, as a model without a plain output layer does
    logits.engine.output_weight = lambda: None
    for actor in (chunked, logits):
        actor.updater.share_prefix = share_prefix
    start = [p.detach().clone() for p in chunked.engine.module.parameters()]
    g = torch.Generator().manual_seed(3)
    lps = logits.logprobs(batch, temperature).logprobs
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [lp + 0.1 * torch.randn(lp.shape, generator=g) for lp in lps]
    old = [lp - 0.05 for lp in lps]
    loss = PolicyLossSettings(kl_coef=0.04, entropy_coef=entropy_coef, temperature=temperature)
    metrics = [a.train_step(PolicyMiniBatch(batch, old, adv, ref), loss)
               for a in (chunked, logits)]
    # float32: the chunked product and the reordered sums differ in the last bits only
    for key in ("policy_loss", "kl_loss", "entropy", "ratio", "grad_norm"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-5, abs=1e-7), key
    moved = 0.0
    for (name, a), b, s in zip(chunked.engine.module.named_parameters(),
                               logits.engine.module.parameters(), start, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
        moved = max(moved, float((a - s).detach().abs().max()))
    assert moved > 1e-4  # the step moved the weights (by ~lr), so equality means something


@pytest.mark.parametrize("share_prefix", [True, False])
def test_scoring_from_hidden_states_equals_the_logits_scoring(tiny_model_path, share_prefix):
    """The no-grad scoring pass (the actor's; the reference's runs the same code on its
    inference engine): log-probs and entropies from hidden states equal the logits path's."""
    from quartet.engines.frozen_model import FrozenCausalLM
    from services.actor.actor import Actor

    batch = _rows()
    actor = Actor(_config(tiny_model_path, 3))
    actor.updater.share_prefix = share_prefix
    chunked = actor.logprobs(batch, 0.8, with_entropy=True)
    weight_of = actor.engine.output_weight
    actor.engine.output_weight = lambda: None
    logits = actor.logprobs(batch, 0.8, with_entropy=True)
    actor.engine.output_weight = weight_of
    reference = FrozenCausalLM(str(tiny_model_path))
    assert reference.engine.output_weight() is not None
    ref = reference.logprobs(batch, 0.8)
    for got, want, ent, ent_want, r in zip(chunked.logprobs, logits.logprobs, chunked.entropy,
                                           logits.entropy, ref.logprobs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, ent_want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r, want, rtol=1e-5, atol=1e-5)


def test_kept_log_softmax_gives_the_recomputed_step(tiny_model_path, monkeypatch):
    """The actor's step keeping its chunks' log-softmax for backward
    (`KEPT_LOGSOFTMAX_BYTES`) takes the step that recomputes them: the same losses,
    gradient norm and updated weights, to the bit."""
    import quartet.ppo.updates as updates
    from services.actor.actor import Actor

    batch = _rows()
    kept, recomputed = Actor(_config(tiny_model_path, 3)), Actor(_config(tiny_model_path, 3))
    g = torch.Generator().manual_seed(4)
    lps = kept.logprobs(batch).logprobs
    adv = [torch.randn(n, generator=g) for n in batch.response_lengths()]
    ref = [lp + 0.1 * torch.randn(lp.shape, generator=g) for lp in lps]
    loss = PolicyLossSettings(kl_coef=0.04, kl_estimator="k3", old_logprobs_from_forward=True)
    assert updates.KEPT_LOGSOFTMAX_BYTES > 0
    metrics = [kept.train_step(PolicyMiniBatch(batch, None, adv, ref), loss)]
    monkeypatch.setattr(updates, "KEPT_LOGSOFTMAX_BYTES", 0)
    metrics.append(recomputed.train_step(PolicyMiniBatch(batch, None, adv, ref), loss))
    for key in ("policy_loss", "kl_loss", "entropy", "grad_norm"):
        assert metrics[0][key] == metrics[1][key], key
    for (name, a), b in zip(kept.engine.module.named_parameters(),
                            recomputed.engine.module.parameters(), strict=True):
        assert torch.equal(a, b), name
