"""Statistics for side-by-side benchmark pairs (pure: numbers in, numbers out; no I/O).

A benchmark here runs A and B alternately in one run (A B A B …, or A B C … with the order reversed
every other round). Each round gives one pair, and the figure is the ratio B/A within the pair: the
machine's load drifts between rounds far more than between the two halves of one round. The figure is
the median of the pair ratios, with the spread (min, max, interquartile range) and a percentile
bootstrap 95% interval of the median, seeded so a report can be reproduced from its raw numbers.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """The pair ratios of one comparison and what they say."""

    ratios: tuple[float, ...]
    median: float
    minimum: float
    maximum: float
    q1: float
    q3: float
    ci_low: float
    ci_high: float

    @property
    def cost(self) -> float:
        """1 - median ratio: the share of throughput (or, for CPU ratios, the extra) the change costs."""
        return 1.0 - self.median

    @property
    def cost_upper(self) -> float:
        """The pessimistic end of the 95% interval, as a cost: 1 - the interval's lower ratio."""
        return 1.0 - self.ci_low

    def as_dict(self) -> dict[str, object]:
        return {
            "ratios": list(self.ratios),
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
            "q1": self.q1,
            "q3": self.q3,
            "ci95": [self.ci_low, self.ci_high],
        }


def pair_ratios(baseline: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """candidate[i] / baseline[i] for every round i; both lists are in round order."""
    if len(baseline) != len(candidate):
        raise ValueError(f"pairs need equal counts: {len(baseline)} baseline runs, {len(candidate)} candidate runs")
    if not baseline:
        raise ValueError("no pairs")
    if any(b <= 0 for b in baseline):
        raise ValueError("a baseline run of zero or less cannot be a ratio's denominator")
    return [c / b for b, c in zip(baseline, candidate, strict=True)]


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, 'linear'), for 0 <= q <= 1."""
    if not values:
        raise ValueError("quantile of nothing")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def bootstrap_median_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 1
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median: resample with replacement, take the medians' quantiles."""
    if not values:
        raise ValueError("bootstrap of nothing")
    rng = random.Random(seed)
    n = len(values)
    medians = [statistics.median(rng.choices(values, k=n)) for _ in range(resamples)]
    tail = (1.0 - level) / 2
    return quantile(medians, tail), quantile(medians, 1.0 - tail)


def summarize(ratios: Sequence[float], *, seed: int = 1) -> Summary:
    if not ratios:
        raise ValueError("no ratios to summarize")
    low, high = bootstrap_median_ci(ratios, seed=seed)
    return Summary(
        ratios=tuple(ratios),
        median=statistics.median(ratios),
        minimum=min(ratios),
        maximum=max(ratios),
        q1=quantile(ratios, 0.25),
        q3=quantile(ratios, 0.75),
        ci_low=low,
        ci_high=high,
    )


def compare(baseline: Sequence[float], candidate: Sequence[float], *, seed: int = 1) -> Summary:
    """Summary of candidate/baseline over rounds in order."""
    return summarize(pair_ratios(baseline, candidate), seed=seed)


def per_thousand(cpu_seconds: float, transactions: float) -> float:
    """CPU-seconds per 1,000 transactions."""
    if transactions <= 0:
        raise ValueError("no transactions: CPU per transaction is undefined")
    return cpu_seconds / transactions * 1000.0
