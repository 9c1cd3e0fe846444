"""Per-sensor tail probabilities: how rare is a statistic this large *for this sensor*.

Every piece of evidence the scorer weighs (forecast residuals, distance from the
time-of-day profile, ...) is a non-negative statistic whose scale and tail shape
differ from sensor to sensor. A tail estimate learns both online: a running scale,
and an exponentially weighted rate at which the scaled statistic exceeded each level
of a fixed grid, shrunk towards an exponential tail. From them comes ``p``, the
estimated probability of a value at least this large, interpolated log-linearly
between grid levels and extrapolated with the last slope beyond them.

Each sensor keeps one such estimate per statistic (:data:`N_STATISTICS` of them,
indexed by :data:`RESIDUAL`, :data:`SUSTAIN`, :data:`PROFILE` and :data:`PATTERN`).

:func:`score_from_probability` maps ``p`` to the anomaly-score scale, ``-log10(p) / 10``
clipped to [0, 1] (the scale Numenta's anomaly likelihood uses): 0.3 is one in a
thousand, 0.5 one in 100,000, 1 one in 10^10 or rarer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .halflife import halflife_weight
from .state import Column

__all__ = [
    "GRID", "N_STATISTICS", "PATTERN", "PRIOR", "PROFILE", "RESIDUAL", "SCORE_DECADES", "SUSTAIN", "TailKnobs",
    "score_from_probability", "surprise_from", "tail_columns", "tail_probability", "tail_step",
]

SCORE_DECADES = 10.0
# Statistics come in units of the sensor's normalising scale. A running scale below
# 1e-3 of it is treated as 1e-3: without a floor, a sensor whose statistic was exactly
# 0 for a while would find any float noise infinitely surprising.
SCALE2_FLOOR = 1e-6

# Which tail estimate of a sensor belongs to which statistic.
RESIDUAL, SUSTAIN, PROFILE, PATTERN = 0, 1, 2, 3
N_STATISTICS = 4

# Scaled-statistic levels at which each sensor tracks how often they are exceeded.
GRID = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0])
LOG_GRID = np.log(GRID)
# Prior exceedance probabilities: an exponential tail with the statistic's unit RMS,
# P(u >= x) = exp(-sqrt(2) x). Where a sensor has no history the prior decides, and a
# Gaussian prior called the first large value impossible (1e-15 at 8 RMS, 1e-300 as
# floored from 10 on) while real sensors' errors have heavier tails; the
# exponential is the maximum-entropy law for a non-negative statistic of known mean.
PRIOR = np.exp(-np.sqrt(2.0) * GRID)


def score_from_probability(p: np.ndarray) -> np.ndarray:
    """Anomaly score in [0, 1] from a tail probability: ``-log10(p) / 10``, clipped."""
    # + 0.0 turns the -0.0 of p = 1 into 0.0 (CSV output shows "-0" otherwise)
    return np.clip(-np.log10(np.maximum(p, 1e-300)) / SCORE_DECADES, 0.0, 1.0) + 0.0


@njit(cache=True)
def surprise_from(p: float) -> float:
    """:func:`score_from_probability` of one probability."""
    return min(max(-math.log10(max(p, 1e-300)) / SCORE_DECADES, 0.0), 1.0) + 0.0


class TailKnobs(NamedTuple):
    """The settings every tail estimate shares, as the compiled pass uses them."""

    scale_alpha: float  # weight of the newest value in the running scale
    tail_alpha: float  # weight of the newest value in the exceedance rates
    prior_weight: float  # pseudo-observations of the exponential prior
    clip: float  # scaled values above this update the scale as this much

    @classmethod
    def of(cls, *, scale_halflife: float, tail_halflife: float, prior_weight: float, clip: float) -> TailKnobs:
        """From half-lives in readings."""
        return cls(halflife_weight(scale_halflife), halflife_weight(tail_halflife), float(prior_weight), float(clip))


def tail_columns() -> list[Column]:
    """State columns of a sensor's tail estimates, one of each per statistic."""
    k = (N_STATISTICS,)
    return [Column("tail_scale2", "float64", 1.0, k), Column("tail_n", "int64", 0, k),
            # float32 rates: their update weight (one over the tail half-life) is far above float32's resolution
            Column("tail_rate", "float32", 0.0, (N_STATISTICS, len(GRID)))]


@njit(cache=True)
def tail_probability(u: float, rate: np.ndarray, n: int, knobs: TailKnobs) -> float:
    """``P(U >= u)`` for a scaled statistic, from exceedance ``rate`` learnt over ``n`` values."""
    n_eff = min(float(n), 1.0 / knobs.tail_alpha)
    w = knobs.prior_weight
    # Without a prior (prior_weight 0) a sensor that has learnt nothing yet knows no tail:
    # nothing is evidence until it has.
    if u <= GRID[0] or n_eff + w <= 0.0:
        return 1.0
    lu = math.log(max(u, 1e-12))
    j = 0  # log-linear interpolation in log(u); past the grid, keep the last slope
    while j < len(GRID) - 2 and LOG_GRID[j + 1] < lu:
        j += 1
    y0 = math.log(max((n_eff * rate[j] + w * PRIOR[j]) / (n_eff + w), 1e-300))
    y1 = math.log(max((n_eff * rate[j + 1] + w * PRIOR[j + 1]) / (n_eff + w), 1e-300))
    slope = min((y1 - y0) / (LOG_GRID[j + 1] - LOG_GRID[j]), 0.0)
    return math.exp(min(y0 + slope * (lu - LOG_GRID[j]), 0.0))


@njit(cache=True)
def tail_step(r: np.void, k: int, x: float, learn: bool, knobs: TailKnobs) -> float:
    """``P(X >= x)`` by statistic ``k``'s estimate in row ``r`` (1 when ``x`` is NaN),
    then learn from ``x`` when ``learn``."""
    if not math.isfinite(x):
        return 1.0
    scale2 = r["tail_scale2"]
    counts = r["tail_n"]
    rate = r["tail_rate"][k]
    s2 = scale2[k]
    n = counts[k]
    u = x / math.sqrt(s2)
    p = tail_probability(u, rate, n, knobs)
    if learn:
        alpha = max(1.0 / (n + 1), knobs.scale_alpha)
        rc = min(u, knobs.clip) ** 2 * s2  # winsorised in scaled units
        scale2[k] = max(s2 + alpha * (rc - s2), SCALE2_FLOOR)
        ta = max(1.0 / (n + 1), knobs.tail_alpha)
        for g in range(len(GRID)):
            rate[g] += ta * ((1.0 if u >= GRID[g] else 0.0) - rate[g])
        counts[k] = n + 1
    return p
