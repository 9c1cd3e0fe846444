"""Residuals into calibrated anomaly scores in [0, 1], per sensor.

A residual is first standardised by the forecast's own predicted standard deviation
and by the sensor's running residual scale. Each sensor keeps an exponentially
weighted history of how often its standardised residuals exceeded a grid of levels,
shrunk towards a Gaussian tail; from it comes ``p``, the estimated probability of a
residual at least this large *for this sensor*.

The anomaly score is ``p`` on a logarithmic scale, ``-log10(p) / 10`` clipped to
[0, 1] (the scale Numenta's anomaly likelihood uses): 0.3 is a one-in-a-thousand
residual, 0.5 one in 100,000, 1 one in 10^10 or rarer. A linear ``1 - p`` would
squeeze every interesting reading into the last digits below 1.

A separate check scores a sensor that repeats exactly the same value far longer than
it ever did before (a stuck transmitter produces tiny residuals, so a forecast alone
never catches it).
"""

from __future__ import annotations

import numpy as np
import torch

from .state import Column

__all__ = ["Scorer"]

_SQRT2 = np.sqrt(2.0)


SCORE_DECADES = 10.0


def score_from_probability(p: np.ndarray) -> np.ndarray:
    """Anomaly score in [0, 1] from a tail probability: ``-log10(p) / 10``, clipped."""
    return np.clip(-np.log10(np.maximum(p, 1e-300)) / SCORE_DECADES, 0.0, 1.0)


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (torch's, to avoid a SciPy dependency)."""
    return torch.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


# Calibrated-residual levels at which each sensor tracks how often it is exceeded.
GRID = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0])
_LOG_GRID = np.log(GRID)
# Prior exceedance probabilities: a Gaussian tail, the shape of a well-calibrated forecast.
PRIOR = np.maximum(1.0 - erf(GRID / _SQRT2), 1e-300)


class Scorer:
    """Turns one wave of residuals into anomaly scores, learning each sensor's tail.

    ``u`` is the residual over the spread the detector passes (the sensor's normalising
    scale, or with ``use_predicted_std`` the forecast's predicted deviation), divided
    by the sensor's running residual scale. Each sensor keeps an exponentially
    weighted rate at which ``u`` exceeded each level of :data:`GRID`, shrunk towards a
    Gaussian prior by ``prior_weight`` pseudo-readings; the tail probability of a ``u``
    at least this large is interpolated log-linearly and mapped to the score by
    :func:`score_from_probability`. A sensor whose forecasts often miss by 8 does not
    alarm at 8; one whose forecasts never do alarms well below it.
    """

    def __init__(self, calibration_halflife: float = 500.0, calibration_clip: float = 6.0, stuck_readings: int = 30,
                 tail_halflife: float = 2000.0, prior_weight: float = 20.0, learn_after: int = 30,
                 use_predicted_std: bool = False) -> None:
        self.alpha_min = 1.0 - 0.5 ** (1.0 / calibration_halflife)
        self.tail_alpha_min = 1.0 - 0.5 ** (1.0 / tail_halflife)
        self.prior_weight = float(prior_weight)
        self.clip = float(calibration_clip)
        self.stuck_readings = int(stuck_readings)
        # The first forecasts of a sensor come from a normaliser that has seen only a
        # few values; learning the residual distribution from them would inflate it.
        self.learn_after = int(learn_after)
        # Judge a residual against the forecast's own predicted deviation (True), or
        # against the sensor's normalising scale only (False).
        self.use_predicted_std = bool(use_predicted_std)

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [
            Column("cal_scale2", "float64", 1.0),
            Column("cal_n", "int64", 0),
            Column("fc_n", "int64", 0),
            Column("tail_rate", "float64", 0.0, (len(GRID),)),
            Column("last_value", "float64", np.nan),
            Column("stuck_run", "int64", 0),
            Column("repeat_rate", "float64", 0.0),
            Column("longest_run", "int64", 0),
        ]

    def tail_probability(self, u: np.ndarray, rate: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Estimated P(U >= u) per reading from the sensors' exceedance rates."""
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

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, values: np.ndarray, fc_mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores for one wave; returns ``(residual, score)``. No forecast yet: score 0."""
        residual = values - fc_mean
        has_fc = np.isfinite(residual)
        r = np.where(has_fc, np.abs(residual) / np.where(has_fc, spread, 1.0), 0.0)

        scale2 = cols["cal_scale2"][slots]
        n = cols["cal_n"][slots]
        fc_n = cols["fc_n"][slots] + has_fc
        cols["fc_n"][slots] = fc_n
        learn = has_fc & (fc_n > self.learn_after)
        rate = cols["tail_rate"][slots]
        u = r / np.sqrt(scale2)
        score = np.where(has_fc, score_from_probability(self.tail_probability(u, rate, n)), 0.0)

        alpha = np.maximum(1.0 / (n + 1), self.alpha_min)
        rc = np.minimum(u, self.clip) ** 2 * scale2  # winsorised in calibrated units
        cols["cal_scale2"][slots] = np.where(learn, scale2 + alpha * (rc - scale2), scale2)
        ta = np.where(learn, np.maximum(1.0 / (n + 1), self.tail_alpha_min), 0.0)[:, None]
        cols["tail_rate"][slots] = rate + ta * ((u[:, None] >= GRID) - rate)
        cols["cal_n"][slots] = n + learn

        score = np.maximum(score, self._stuck(cols, slots, values))
        return residual, score
    def _stuck(self, cols: dict[str, np.ndarray], slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        last = cols["last_value"][slots]
        repeat = values == last
        prev_run = cols["stuck_run"][slots]
        run = np.where(repeat, prev_run + 1, 0)
        longest = cols["longest_run"][slots]
        # A run that just ended raises the bar for what counts as stuck later.
        cols["longest_run"][slots] = np.where(repeat, longest, np.maximum(longest, prev_run))
        rate = cols["repeat_rate"][slots]
        n = cols["cal_n"][slots]
        a = np.maximum(1.0 / np.maximum(n, 1), self.alpha_min)
        cols["repeat_rate"][slots] = rate + a * (repeat - rate)
        cols["stuck_run"][slots] = run
        cols["last_value"][slots] = values
        if self.stuck_readings <= 0:
            return np.zeros(len(slots))
        # Stuck: at least stuck_readings repeats and more than twice the longest run this
        # sensor has shown; scored by how unlikely such a run is at its usual repeat rate.
        stuck = run >= np.maximum(self.stuck_readings, 2 * longest + 1)
        p_run = np.power(np.clip(rate, 1e-3, 0.999), run - longest)
        return np.where(stuck, score_from_probability(p_run), 0.0)
