"""Order statistics for benchmark samples: summaries, a distribution-free interval for the median,
and ratios taken pair by pair.

Benchmark times on a shared machine are skewed (other programs only ever add time), so everything
here rests on medians and order statistics rather than means and standard deviations."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """The five-number summary of a sample (quartiles by the inclusive method)."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float


def _require(values: Sequence[float], what: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{what} needs at least one value, got an empty sequence")
    return xs


def summarize(values: Sequence[float]) -> Summary:
    """Median, quartiles and range of ``values`` (at least one)."""
    xs = _require(values, "summarize")
    if len(xs) == 1:
        q1 = med = q3 = xs[0]
    else:
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Summary(n=len(xs), median=med, q1=q1, q3=q3, min=min(xs), max=max(xs))


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: ``(low, high, coverage)``.

    The interval runs from the k-th smallest to the k-th largest value, with k as large as keeps
    the coverage (from the binomial distribution: each value falls below the true median with
    probability one half) at least ``confidence``. With too few values for that, it is the whole
    range and ``coverage`` says how much it holds (0 for one value, 0.5 for two, 0.75 for
    three...)."""
    xs = sorted(_require(values, "median_interval"))
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    n = len(xs)

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n+1-k))
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def fewest_values(confidence: float = 0.95) -> int:
    """How many values :func:`median_interval` needs before its widest interval (the whole
    range) holds the median with ``confidence``: 6 for 95% (five give 93.75%). Fewer rounds
    than this can never make a verdict "met" or "not met"."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    n = 1
    while 1 - 2 / 2.0**n < confidence:
        n += 1
    return n


def paired_ratios(program: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """``program[i] / baseline[i]`` for every pair: each measurement against the baseline one taken
    next to it, so that slow drifts of the machine cancel out of each ratio."""
    if len(program) != len(baseline):
        raise ValueError(
            f"paired ratios need as many program values as baseline values, got "
            f"{len(program)} and {len(baseline)}"
        )
    _require(program, "paired_ratios")
    for i, b in enumerate(baseline):
        if b == 0:
            raise ValueError(f"baseline value {i} is zero; a ratio to it is undefined")
    return [p / b for p, b in zip(program, baseline, strict=True)]
