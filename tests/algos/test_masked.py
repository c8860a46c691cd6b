import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quartet.algos.masked import (
    GlobalMoments,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

RIGHT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
LEFT = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)


def test_masked_sum_and_mean_right_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 6.0, 99.0, 99.0]])
    assert masked_sum(values, RIGHT).item() == 16.0  # 1+2+3+4+6
    assert masked_mean(values, RIGHT).item() == pytest.approx(16.0 / 5)
    torch.testing.assert_close(masked_mean(values, RIGHT, dim=-1), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(masked_sum(values, RIGHT, dim=-1), torch.tensor([6.0, 10.0]))


def test_masked_mean_left_padding_and_float_mask():
    values = torch.tensor([[99.0, 1.0, 2.0, 3.0], [99.0, 99.0, 4.0, 6.0]])
    torch.testing.assert_close(masked_mean(values, LEFT, dim=-1), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(masked_mean(values, LEFT.float(), dim=-1), torch.tensor([2.0, 5.0]))
    out = masked_mean(values, LEFT, dim=-1, keepdim=True)
    assert out.shape == (2, 1)


def test_fully_masked_row_is_zero_not_nan_and_ignores_inf():
    values = torch.tensor([[1.0, 3.0], [float("inf"), float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    per_row = masked_mean(values, mask, dim=-1)
    torch.testing.assert_close(per_row, torch.tensor([2.0, 0.0]))
    per_row.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_masked_var():
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, squared deviations 1 + 0 + 1 = 2
    assert masked_var(values, mask).item() == pytest.approx(2.0 / 3)
    assert masked_var(values, mask, unbiased=True).item() == pytest.approx(1.0)


def test_whiten_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, population var 2/3
    s = math.sqrt(2.0 / 3.0)
    out = masked_whiten(values, mask)
    torch.testing.assert_close(out, torch.tensor([[-1 / s, 0.0, 1 / s, 0.0]]))
    scaled = masked_whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(scaled, torch.tensor([[1 / s, 2 / s, 3 / s, 0.0]]))
    centred = masked_whiten(values, mask, divide_by_std=False)
    torch.testing.assert_close(centred, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))


def test_whiten_left_padding_matches_right_padding():
    right = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 7.0, 0.0, 0.0]])
    left = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 5.0, 7.0]])
    out_r = masked_whiten(right, RIGHT)
    out_l = masked_whiten(left, LEFT)
    torch.testing.assert_close(out_r[RIGHT], out_l[LEFT])


def test_whiten_constant_values_and_empty_mask_are_finite():
    out = masked_whiten(torch.full((2, 3), 4.0), torch.ones(2, 3))
    torch.testing.assert_close(out, torch.zeros(2, 3))
    out = masked_whiten(torch.randn(2, 3), torch.zeros(2, 3))
    torch.testing.assert_close(out, torch.zeros(2, 3))


def test_global_moments_two_shards_equal_concatenation():
    a = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask_a = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    b = torch.tensor([[0.0, 10.0, -2.0], [0.0, 0.0, 7.0]])  # left padded, another width
    mask_b = torch.tensor([[0, 1, 1], [0, 0, 1]])
    merged = GlobalMoments.from_values(a, mask_a).merge(GlobalMoments.from_values(b, mask_b))

    flat = [1.0, 2.0, 3.0, 4.0, 10.0, -2.0, 7.0]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / len(flat)
    assert merged.count == 7
    assert merged.mean == pytest.approx(mean)
    assert merged.var == pytest.approx(var)

    whitened_a = masked_whiten(a, mask_a, moments=merged)
    whitened_b = masked_whiten(b, mask_b, moments=merged)
    concat = torch.tensor([flat])
    expected = masked_whiten(concat, torch.ones_like(concat))[0]
    got = torch.cat([whitened_a[mask_a.bool()], whitened_b[mask_b.bool()]])
    torch.testing.assert_close(got, expected)


def test_global_moments_pack_roundtrip_and_empty():
    m = GlobalMoments.from_values(torch.tensor([1.0, 2.0, 4.0]))
    packed = m.to_tensor()
    assert packed.dtype == torch.float64 and packed.tolist() == [7.0, 21.0, 3.0]
    assert GlobalMoments.from_tensor(packed) == m
    assert (m + GlobalMoments()) == m
    empty = GlobalMoments()
    assert (empty.mean, empty.var, empty.std) == (0.0, 0.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=30),
    st.integers(0, 30),
)
def test_property_split_anywhere_equals_whole(xs, cut):
    cut = min(cut, len(xs))
    t = torch.tensor(xs, dtype=torch.float64)
    whole = GlobalMoments.from_values(t)
    parts = GlobalMoments.from_values(t[:cut]).merge(GlobalMoments.from_values(t[cut:]))
    assert parts.count == whole.count
    assert parts.mean == pytest.approx(whole.mean, abs=1e-9)
    assert parts.var == pytest.approx(whole.var, rel=1e-6, abs=1e-6)
