"""Per-sensor online normalisation and the forecaster's input features.

The GRU sees each reading as a small feature vector:

* ``z``: the value normalised by the sensor's running mean and standard deviation
  *before* this reading is included (so it is also the training target for the
  previous step), clipped so a wild value cannot saturate the network;
* ``dt``: log of the time since the sensor's previous reading relative to its usual
  interval (0 for the first reading), so irregular sampling is visible;
* time of day and day of week as sine/cosine pairs (UTC).

The same code builds features in the live detector and in training, so the shipped
model sees exactly the inputs it was trained on.
"""

from __future__ import annotations

import numpy as np

from .halflife import halflife_weight
from .state import Column

__all__ = ["FeatureBuilder", "N_FEATURES", "Z_CLIP"]

N_FEATURES = 6
Z_CLIP = 10.0
_DT_CLIP = 5.0
_DAY = 86400.0
_WEEK = 7 * _DAY
_TWO_PI = 2.0 * np.pi


class FeatureBuilder:
    """Updates each sensor's normaliser and turns one wave of readings into GRU inputs."""

    def __init__(self, *, normaliser_halflife: float) -> None:
        # EWMA weight with a 1/n warm start: exact running mean for the first
        # readings, then a long memory that still follows slow drift.
        self.alpha_min = halflife_weight(normaliser_halflife)

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [
            Column("count", "int64", 0),
            Column("last_ts", "float64", -np.inf),
            Column("norm_mean", "float64", 0.0),
            Column("norm_var", "float64", 0.0),
            Column("logdt_mean", "float64", 0.0),
        ]

    @staticmethod
    def std(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Normalising scale with a floor, so constant sensors do not divide by zero."""
        floor = 1e-3 * np.maximum(np.abs(mean), 1.0)
        return np.sqrt(var + floor * floor)

    @staticmethod
    def assemble(z: np.ndarray, dt_feat: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Stack already normalised parts into ``[..., N_FEATURES]`` GRU inputs."""
        x = np.empty((*np.shape(z), N_FEATURES), dtype=np.float32)
        x[..., 0] = z
        x[..., 1] = dt_feat
        day = _TWO_PI * np.mod(ts, _DAY) / _DAY
        week = _TWO_PI * np.mod(ts, _WEEK) / _WEEK
        x[..., 2] = np.sin(day)
        x[..., 3] = np.cos(day)
        x[..., 4] = np.sin(week)
        x[..., 5] = np.cos(week)
        return x

    def replay(self, cols: dict[str, np.ndarray], slots: np.ndarray, ts: np.ndarray, values: np.ndarray,
               valid: np.ndarray) -> np.ndarray:
        """Features of past readings ``[S, L]`` with the sensors' *current* normaliser.

        Used to re-warm hidden states and to train on the history ring: the normaliser
        of the time is not kept, and the current one is what the model will see next.
        ``valid`` marks real readings (rings that are not full yet are padded).
        """
        mean = cols["norm_mean"][slots][:, None]
        std = self.std(mean, cols["norm_var"][slots][:, None])
        z = np.clip((values - mean) / std, -Z_CLIP, Z_CLIP)
        logdt = np.log(np.maximum(np.diff(ts, axis=1, prepend=ts[:, :1]), 1e-3))
        dt_feat = np.clip(logdt - cols["logdt_mean"][slots][:, None], -_DT_CLIP, _DT_CLIP)
        dt_feat[:, 0] = 0.0
        x = self.assemble(np.where(valid, z, 0.0), np.where(valid, dt_feat, 0.0), np.where(valid, ts, 0.0))
        return x

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features for one wave (each slot at most once), updating the sensors' stats.

        Returns ``(x, mean, std)``: the ``[n, N_FEATURES]`` inputs, and the normaliser
        *after* including this reading, which is the scale of the forecast made from it.
        """
        count = cols["count"][slots]
        mean = cols["norm_mean"][slots]
        var = cols["norm_var"][slots]
        last_ts = cols["last_ts"][slots]
        logdt_mean = cols["logdt_mean"][slots]

        first = count == 0
        std = self.std(mean, var)
        z = np.where(first, 0.0, (values - mean) / std)
        np.clip(z, -Z_CLIP, Z_CLIP, out=z)

        dt = ts - last_ts
        logdt = np.log(np.maximum(np.where(first, 1.0, dt), 1e-3))
        dt_feat = np.where(count < 2, 0.0, np.clip(logdt - logdt_mean, -_DT_CLIP, _DT_CLIP))

        x = self.assemble(z, dt_feat, ts)

        n = count + 1
        alpha = np.maximum(1.0 / n, self.alpha_min)
        delta = values - mean
        new_mean = mean + alpha * delta
        new_var = (1.0 - alpha) * (var + alpha * delta * delta)
        # interval stats start at the second reading
        a_dt = np.maximum(1.0 / np.maximum(count, 1), self.alpha_min)
        new_logdt = np.where(count == 0, 0.0, np.where(count == 1, logdt, logdt_mean + a_dt * (logdt - logdt_mean)))

        cols["count"][slots] = n
        cols["norm_mean"][slots] = new_mean
        cols["norm_var"][slots] = new_var
        cols["last_ts"][slots] = ts
        cols["logdt_mean"][slots] = new_logdt
        return x, new_mean, self.std(new_mean, new_var)
