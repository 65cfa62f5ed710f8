"""The numbers behind every table cell: mean ± sample std over runs, and the paired-by-seed
difference from a baseline with its t-interval. The one place these are computed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


def numbers(values: Iterable) -> list[float]:
    """The values that are numbers, as floats; None, NaN and non-numbers dropped."""
    out = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            out.append(v)
    return out


def mean_std(values: Iterable) -> tuple[int, float, float]:
    """(n, mean, sample std, ddof=1) of the numbers among values; std is NaN below two
    numbers, mean NaN for none."""
    nums = numbers(values)
    n = len(nums)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(nums) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (n - 1)) if n > 1 else math.nan
    return n, mean, std


@dataclass(frozen=True)
class Difference:
    n: int  # seeds both sides ran
    mean: float
    low: float
    high: float


NO_DIFFERENCE = Difference(0, math.nan, math.nan, math.nan)


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      level: float = LEVEL) -> Difference:
    """Mean of the per-seed differences values[s] − baseline[s] over common seeds, and its
    t-interval (mean ± t_{(1+level)/2, n−1} · sd / √n); NaN bounds below two seeds."""
    seeds = sorted(s for s in values.keys() & baseline.keys()
                   if numbers([values[s]]) and numbers([baseline[s]]))
    n, mean, sd = mean_std(values[s] - baseline[s] for s in seeds)
    if n < 2:
        return Difference(n, mean, math.nan, math.nan)
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Difference(n, mean, mean - half, mean + half)
