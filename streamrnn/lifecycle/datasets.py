"""Training data cut from sensor histories, with exactly the detector's own features.

* :func:`make_windows`: per-sensor series (a file, the topics' history, a synthetic
  fleet) into fixed-length windows and next-value targets, by running the same
  :class:`~streamrnn.core.features.FeatureBuilder` the live detector runs;
* :func:`windows_by_sensor`: the same per sensor of a long frame, each sensor's latest
  windows held out for validation;
* :func:`ring_targets`: targets and train/validation masks for the history rings the
  running detector keeps (scheduled retraining).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas only for frames of file or topic history (not on the scoring path)
    import pandas as pd

from ..core.features import N_FEATURES, Z_CLIP, series_features

__all__ = ["MAX_WINDOWS_PER_SENSOR", "NotEnoughHistory", "STRIDE", "WINDOW", "make_windows", "ring_targets", "windows_by_sensor"]

# Windows of a file or topic history: long enough to carry a daily cycle at 5-minute
# readings, half-overlapping; a sensor gives at most this many training windows.
WINDOW, STRIDE, MAX_WINDOWS_PER_SENSOR = 256, 128, 64


class NotEnoughHistory(ValueError):
    """No sensor has the readings needed for a training and a validation window."""


def make_windows(ts: np.ndarray, values: np.ndarray, *, window: int, stride: int,
                 normaliser_halflife: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``x [N, window, F]`` and next-value targets ``y [N, window]``.

    ``ts`` and ``values`` are ``[sensors, T]`` matrices, each row one sensor in time
    order. Features come from a fresh normaliser run over each whole row, by the
    detector's own compiled step.
    """
    ts = np.atleast_2d(np.asarray(ts, dtype=np.float64))
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_s, n_t = values.shape
    if n_t < window + 1 or n_s == 0:
        return np.zeros((0, window, N_FEATURES), np.float32), np.zeros((0, window), np.float32)
    feats = series_features(ts, values, normaliser_halflife=normaliser_halflife)
    target = np.clip(feats[:, 1:, 0], -Z_CLIP, Z_CLIP)
    starts = range(0, n_t - 1 - window + 1, stride)
    x = np.concatenate([feats[:, s:s + window] for s in starts])
    y = np.concatenate([target[:, s:s + window] for s in starts])
    return x, y.astype(np.float32)


def windows_by_sensor(df: pd.DataFrame, *, validation_fraction: float, normaliser_halflife: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation windows; each sensor's latest windows are its validation part."""
    xs, ys, xv, yv = [], [], [], []
    for _, g in df.sort_values(["sensor_id", "ts"], kind="stable").groupby("sensor_id", sort=False):
        g = g.drop_duplicates("ts")
        x, y = make_windows(g["ts"].to_numpy()[None, :], g["value"].to_numpy()[None, :], window=WINDOW, stride=STRIDE,
                            normaliser_halflife=normaliser_halflife)
        if len(x) < 2:
            continue
        n_val = max(1, int(round(validation_fraction * len(x))))
        tr, va = np.arange(len(x) - n_val), np.arange(len(x) - n_val, len(x))
        if len(tr) > MAX_WINDOWS_PER_SENSOR:  # chatty sensors do not dominate
            tr = np.sort(rng.choice(tr, MAX_WINDOWS_PER_SENSOR, replace=False))
        xs.append(x[tr])
        ys.append(y[tr])
        xv.append(x[va])
        yv.append(y[va])
    if not xs:
        raise NotEnoughHistory(f"no sensor has the {WINDOW + STRIDE + 1} readings needed for two windows")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(xv), np.concatenate(yv)


def ring_targets(x: np.ndarray, lengths: np.ndarray, *, validation_fraction: float, burn_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets and train/validation masks for history-ring sequences.

    The target of step ``t`` is the normalised value at ``t+1``. The most recent
    ``validation_fraction`` of each sequence is held out: its steps count only in the
    validation loss (the earlier steps are their context).
    """
    n, L = x.shape[:2]
    y = np.zeros((n, L), dtype=np.float32)
    y[:, :-1] = np.clip(x[:, 1:, 0], -Z_CLIP, Z_CLIP)
    steps = np.arange(L)[None, :]
    last = (lengths - 1)[:, None]  # the last real step has no target
    split = (lengths - np.maximum(1, np.round(validation_fraction * lengths)).astype(int))[:, None]
    train = (steps >= burn_in) & (steps < split - 1)
    val = (steps >= split - 1) & (steps < last)
    return y, train, val
