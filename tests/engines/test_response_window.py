"""Logits from the first response position on give the same log-probs as the full forward."""

import pytest
import torch

from quartet.data.batch import collate
from quartet.data.tokenize import TokenizedSample
from quartet.engines.scoring import response_start
from quartet.models.attention import forward_inputs
from quartet.trainers.logps import sequence_logps


@pytest.mark.parametrize("packed", [False, True])
def test_windowed_sequence_logps_equal_the_full_forward(tiny_model_path, packed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    g = torch.Generator().manual_seed(0)
    samples = []
    for prompt, response in ((7, 3), (4, 6), (9, 2)):
        ids = torch.randint(3, 200, (prompt + response,), generator=g).tolist()
        samples.append(TokenizedSample(ids, [0] * prompt + [1] * response))
    batch = collate(samples, 0, packed)
    start = response_start(batch)
    assert start == (3 if not packed else 6)  # the shortest prompt's last position
    with torch.no_grad():
        full = model(**forward_inputs(batch, "sdpa", torch.float32)).logits
        window = model(**forward_inputs(batch, "sdpa", torch.float32, start)).logits
    assert window.shape[1] == batch.input_ids.shape[1] - start
    sums_full, _, _ = sequence_logps(batch, full)
    sums_window, lp, mask = sequence_logps(batch, window, start=start)
    assert torch.allclose(sums_full, sums_window, atol=1e-4)
    assert int(mask.sum()) == 3 + 6 + 2 and lp.shape == mask.shape
