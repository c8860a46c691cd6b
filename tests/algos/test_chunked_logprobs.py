"""Chunked log-probs from hidden states (quartet.algos.chunked_logprobs) are the logits
path's log-probs and entropies, with the same gradients for the hidden states and the output
layer, whatever the chunking, temperature or dtype."""

import pytest
import torch

from quartet.algos.chunked_logprobs import chunk_rows, hidden_token_stats
from quartet.algos.losses import entropy_from_logits, token_logprobs


def _reference(hidden, weight, labels, temperature):
    """The logits path: logits for every position, then the row-wise log-softmax."""
    logits = (hidden @ weight.t())[None]
    return (token_logprobs(logits, labels[None], temperature)[0],
            entropy_from_logits(logits, temperature)[0])


def _case(n=37, h=16, v=301, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=dtype) * 0.5).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, labels, g


@pytest.mark.parametrize("chunk", [1, 5, 37, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_logits_path(chunk, temperature):
    hidden, weight, labels, g = _case()
    labels[3] = -100  # an ignore index: log-prob 0, no gradient through it
    g_lp, g_ent = torch.randn(37, generator=g), torch.randn(37, generator=g)
    lp, ent = hidden_token_stats(hidden, weight, labels, temperature, chunk=chunk)
    (lp * g_lp + ent * g_ent).sum().backward()
    got = (lp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    lp_ref, ent_ref = _reference(hidden, weight, labels, temperature)
    (lp_ref * g_lp + ent_ref * g_ent).sum().backward()
    want = (lp_ref.detach(), ent_ref.detach(), hidden.grad, weight.grad)
    assert lp[3] == 0.0
    # float64: only the order of the additions differs (chunks vs one product)
    for a, b, name in zip(got, want, ("logprobs", "entropy", "d hidden", "d weight"),
                          strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-10), name
    assert float(want[2].abs().max()) > 1e-2  # the gradients are not trivially zero


def test_only_logprobs_or_only_entropy_in_the_loss():
    hidden, weight, labels, _ = _case(dtype=torch.float32, seed=1)
    for pick in (0, 1):
        out = hidden_token_stats(hidden, weight, labels, chunk=8)[pick]
        out.sum().backward()
        got = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        _reference(hidden, weight, labels, 1.0)[pick].sum().backward()
        assert torch.allclose(got[0], hidden.grad, rtol=1e-4, atol=1e-5)
        assert torch.allclose(got[1], weight.grad, rtol=1e-4, atol=1e-5)
        hidden.grad = weight.grad = None


def test_float32_chunks_give_the_logits_paths_values():
    """In float32 (the benchmark's dtype) the chunked product gives the logits path's
    log-probs to float32 rounding."""
    hidden, weight, labels, _ = _case(n=200, h=64, v=4000, dtype=torch.float32, seed=2)
    lp, ent = hidden_token_stats(hidden, weight, labels)
    lp_ref, ent_ref = _reference(hidden, weight, labels, 1.0)
    assert torch.allclose(lp, lp_ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ent, ent_ref, rtol=1e-5, atol=1e-5)


def test_bf16_is_upcast_like_the_logits_path():
    hidden, weight, labels, _ = _case(dtype=torch.bfloat16, seed=3)
    lp, ent = hidden_token_stats(hidden, weight, labels, chunk=4)
    lp_ref, ent_ref = _reference(hidden, weight, labels, 1.0)
    assert lp.dtype == torch.float32
    assert torch.equal(lp, lp_ref) and torch.equal(ent, ent_ref)


def test_empty_input_and_bad_arguments():
    hidden, weight, labels, _ = _case(n=0)
    lp, ent = hidden_token_stats(hidden, weight, labels)
    assert lp.shape == (0,) and ent.shape == (0,)
    with pytest.raises(ValueError, match="temperature"):
        hidden_token_stats(hidden, weight, labels, 0.0)
    with pytest.raises(ValueError, match=r"\[N, H\]"):
        hidden_token_stats(hidden[None], weight, labels)


def test_chunk_rows_bounds_the_logits_bytes():
    assert chunk_rows(49152) == 85
    assert chunk_rows(10**9) == 1


def test_into_grad_adds_the_output_layers_gradient_to_a_tied_weight():
    """A tied embedding (the weight also used as an input embedding): adding into
    `weight.grad` in backward gives autograd's gradient, over two accumulated backwards."""
    hidden, weight, labels, g = _case(dtype=torch.float64, seed=4)
    ids = torch.randint(0, weight.shape[0], (37,), generator=g)

    def loss(into_grad):
        emb = weight[ids]  # the input embedding's use of the same weight
        lp, ent = hidden_token_stats(hidden + emb, weight, labels, 0.9, chunk=6,
                                     into_grad=into_grad)
        return (lp * 2.0 + ent).sum()

    grads = []
    for into_grad in (True, False):
        for _ in range(2):  # the second backward accumulates into an existing .grad
            loss(into_grad).backward()
        grads.append((weight.grad.clone(), hidden.grad.clone()))
        weight.grad = hidden.grad = None
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="leaf"):
        hidden_token_stats(hidden, weight * 1.0, labels, into_grad=True)


@pytest.mark.parametrize("with_entropy_grad", [False, True])
def test_kept_chunks_give_the_recomputed_gradients(with_entropy_grad):
    """Chunks whose log-softmax is kept from the forward (`keep_bytes`: none, the first
    two of five, all) give the gradients of recomputing them in backward, in float32 to the
    last bit or nearly (the same product, computed once)."""
    hidden, weight, labels, g = _case(n=40, h=32, v=500, dtype=torch.float32, seed=5)
    labels[7] = -100
    g_lp, g_ent = torch.randn(40, generator=g), torch.randn(40, generator=g)
    chunk_bytes = 8 * 500 * 4
    grads = []
    for keep in (0, 2 * chunk_bytes, 10 * chunk_bytes):
        lp, ent = hidden_token_stats(hidden, weight, labels, 0.8, chunk=8, keep_bytes=keep)
        loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if with_entropy_grad else 0.0)
        loss.backward()
        grads.append((lp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    for got in grads[1:]:
        for a, b in zip(got, grads[0], strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="keep_bytes"):
        hidden_token_stats(hidden, weight, labels, keep_bytes=-1)


def test_backward_twice_with_kept_chunks():
    """`retain_graph`: the kept chunks are used once, the second backward recomputes."""
    hidden, weight, labels, _ = _case(dtype=torch.float64, seed=6)
    lp, _ = hidden_token_stats(hidden, weight, labels, chunk=5, keep_bytes=1 << 20)
    lp.sum().backward(retain_graph=True)
    first = hidden.grad.clone()
    lp.sum().backward()
    assert torch.allclose(hidden.grad, 2 * first, rtol=1e-12, atol=1e-12)
