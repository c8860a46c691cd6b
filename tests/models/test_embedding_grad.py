"""An input embedding whose backward adds into `.grad` (quartet.models.embedding_grad) gives
`nn.Embedding`'s gradient, padding row excluded, over accumulated backwards."""

import pytest
import torch
from torch import nn

from quartet.models.embedding_grad import embed_into_grad, plain_embedding


def test_gradient_equals_nn_embeddings_over_two_backwards():
    g = torch.Generator().manual_seed(0)
    emb = nn.Embedding(50, 8, padding_idx=3).double()
    ids = torch.randint(0, 50, (4, 9), generator=g)
    ids[0, :4] = 3  # padding tokens: no gradient to row 3
    ids[1, :5] = 7  # a repeated token: its rows add up
    upstream = torch.randn(4, 9, 8, generator=g, dtype=torch.float64)
    grads = []
    for fn in (embed_into_grad, lambda e, i: e(i)):
        for _ in range(2):
            out = fn(emb, ids)
            assert torch.equal(out, emb(ids))
            (out * upstream).sum().backward()
        grads.append(emb.weight.grad.clone())
        emb.weight.grad = None
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    assert float(grads[0][3].abs().max()) == 0.0 and float(grads[0][7].abs().max()) > 0


def test_only_plain_embeddings():
    assert plain_embedding(nn.Embedding(5, 2)) is not None
    for odd in (nn.Embedding(5, 2, max_norm=1.0), nn.Embedding(5, 2, sparse=True),
                nn.Embedding(5, 2, scale_grad_by_freq=True), nn.Linear(2, 2)):
        assert plain_embedding(odd) is None
    with pytest.raises(ValueError, match="plain nn.Embedding"):
        embed_into_grad(nn.Embedding(5, 2, max_norm=1.0), torch.tensor([1]))
