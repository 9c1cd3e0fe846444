"""Per-sensor tail probabilities: how rare is a statistic this large *for this sensor*.

Every piece of evidence the scorer weighs (forecast residuals, distance from the
time-of-day profile) is a non-negative statistic whose scale and tail shape differ
from sensor to sensor. :class:`TailEstimator` learns both online: a running scale,
and an exponentially weighted rate at which the scaled statistic exceeded each level
of a fixed grid, shrunk towards an exponential tail. From them comes ``p``, the estimated
probability of a value at least this large, interpolated log-linearly between grid
levels and extrapolated with the last slope beyond them.

:func:`score_from_probability` maps ``p`` to the anomaly-score scale, ``-log10(p) / 10``
clipped to [0, 1] (the scale Numenta's anomaly likelihood uses): 0.3 is one in a
thousand, 0.5 one in 100,000, 1 one in 10^10 or rarer.
"""

from __future__ import annotations

import numpy as np

from .halflife import halflife_weight
from .state import Column

__all__ = ["GRID", "SCORE_DECADES", "TailEstimator", "score_from_probability"]

SCORE_DECADES = 10.0
# Statistics come in units of the sensor's normalising scale. A running scale below
# 1e-3 of it is treated as 1e-3: without a floor, a sensor whose statistic was exactly
# 0 for a while would find any float noise infinitely surprising.
_SCALE2_FLOOR = 1e-6


def score_from_probability(p: np.ndarray) -> np.ndarray:
    """Anomaly score in [0, 1] from a tail probability: ``-log10(p) / 10``, clipped."""
    # + 0.0 turns the -0.0 of p = 1 into 0.0 (CSV output shows "-0" otherwise)
    return np.clip(-np.log10(np.maximum(p, 1e-300)) / SCORE_DECADES, 0.0, 1.0) + 0.0


# Scaled-statistic levels at which each sensor tracks how often they are exceeded.
GRID = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0])
_LOG_GRID = np.log(GRID)
# Prior exceedance probabilities: an exponential tail with the statistic's unit RMS,
# P(u >= x) = exp(-sqrt(2) x). Where a sensor has no history the prior decides, and a
# Gaussian prior called the first large value impossible (1e-15 at 8 RMS, 1e-300 as
# floored from 10 on) while real sensors' errors have heavier tails; the
# exponential is the maximum-entropy law for a non-negative statistic of known mean.
# Measured on NAB DEV (standard): Gaussian 73.9, Student-t(3) 72.5, exponential 75.6.
PRIOR = np.exp(-np.sqrt(2.0) * GRID)


class TailEstimator:
    """Learns, per sensor, the distribution tail of one non-negative statistic.

    The statistic is divided by the sensor's running root-mean-square of it (half-life
    ``scale_halflife``, updates winsorised at ``clip`` so an anomaly does not inflate
    it), and the result ``u`` is compared with :data:`GRID`. The exceedance rates have
    half-life ``tail_halflife`` and are shrunk towards :data:`PRIOR` by
    ``prior_weight`` pseudo-observations, so a young sensor is judged by an exponential
    tail and an old one by its own history. ``prefix`` names the state columns, so
    several estimators live side by side in one state bank.
    """

    def __init__(self, prefix: str, *, scale_halflife: float, tail_halflife: float, prior_weight: float, clip: float) -> None:
        self.prefix = prefix
        self.alpha_min = halflife_weight(scale_halflife)
        self.tail_alpha_min = halflife_weight(tail_halflife)
        self.prior_weight = float(prior_weight)
        self.clip = float(clip)

    def columns(self) -> list[Column]:
        """State columns this estimator owns."""
        p = self.prefix
        return [Column(f"{p}_scale2", "float64", 1.0), Column(f"{p}_n", "int64", 0), Column(f"{p}_rate", "float64", 0.0, (len(GRID),))]

    def _probability(self, u: np.ndarray, rate: np.ndarray, n: np.ndarray) -> np.ndarray:
        n_eff = np.minimum(n, 1.0 / self.tail_alpha_min)[:, None]
        p = (n_eff * rate + self.prior_weight * PRIOR) / (n_eff + self.prior_weight)
        logp = np.log(np.maximum(p, 1e-300))
        lu = np.log(np.maximum(u, 1e-12))
        # log-linear interpolation in log(u); past the grid, keep the last slope
        j = np.clip(np.searchsorted(_LOG_GRID, lu) - 1, 0, len(GRID) - 2)
        rows = np.arange(len(u))
        x0, x1 = _LOG_GRID[j], _LOG_GRID[j + 1]
        y0, y1 = logp[rows, j], logp[rows, j + 1]
        slope = np.minimum((y1 - y0) / (x1 - x0), 0.0)
        y = y0 + slope * (lu - x0)
        return np.where(u <= GRID[0], 1.0, np.exp(np.minimum(y, 0.0)))

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, x: np.ndarray, learn: np.ndarray) -> np.ndarray:
        """``P(X >= x)`` per reading (1 where ``x`` is NaN), then learn from ``x`` where ``learn``."""
        p_ = self.prefix
        scale2 = cols[f"{p_}_scale2"][slots]
        n = cols[f"{p_}_n"][slots]
        rate = cols[f"{p_}_rate"][slots]
        ok = np.isfinite(x)
        u = np.where(ok, x, 0.0) / np.sqrt(scale2)
        p = np.where(ok, self._probability(u, rate, n), 1.0)

        learn = learn & ok
        alpha = np.maximum(1.0 / (n + 1), self.alpha_min)
        rc = np.minimum(u, self.clip) ** 2 * scale2  # winsorised in scaled units
        cols[f"{p_}_scale2"][slots] = np.where(learn, np.maximum(scale2 + alpha * (rc - scale2), _SCALE2_FLOOR), scale2)
        ta = np.where(learn, np.maximum(1.0 / (n + 1), self.tail_alpha_min), 0.0)[:, None]
        cols[f"{p_}_rate"][slots] = rate + ta * ((u[:, None] >= GRID) - rate)
        cols[f"{p_}_n"][slots] = n + learn
        return p
