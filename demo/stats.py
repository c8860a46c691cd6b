"""Confidence intervals and tests for held-out accuracy (standard library only).

- `wilson`: the Wilson score 95% interval of one accuracy.
- `paired_difference`: before/after on the *same* problems: the mean per-problem change with
  a normal-approximation 95% interval, and McNemar's exact test on the discordant pairs.
- `two_proportion`: the unpaired two-proportion z-test (conservative here, reported too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        raise ValueError("wilson: n must be > 0")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_proportion(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z and two-sided p of H0: p1 == p2 (pooled variance)."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, min(1.0, 2 * _normal_sf(abs(z)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: b = right before only, c = right after only."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedResult:
    n: int
    before: float
    after: float
    diff: float
    diff_low: float
    diff_high: float
    only_before: int
    only_after: int
    mcnemar_p: float


def paired_difference(before: list[bool], after: list[bool], z: float = Z95) -> PairedResult:
    if len(before) != len(after) or not before:
        raise ValueError("paired_difference: need two equal-length, non-empty lists")
    n = len(before)
    d = [int(a) - int(b) for b, a in zip(before, after, strict=True)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    only_before = sum(1 for x in d if x < 0)
    only_after = sum(1 for x in d if x > 0)
    return PairedResult(n, sum(before) / n, sum(after) / n, mean, mean - half, mean + half,
                        only_before, only_after, mcnemar_exact(only_before, only_after))
