"""Per-sensor online normalisation and the forecaster's input features.

The GRU sees each reading as a small feature vector:

* ``z``: the value normalised by the sensor's running mean and standard deviation
  *before* this reading is included (so it is also the training target for the
  previous step), clipped so a wild value cannot saturate the network;
* ``dt``: log of the time since the sensor's previous reading relative to its usual
  interval (0 for the first reading), so irregular sampling is visible;
* time of day and day of week as sine/cosine pairs (UTC).

The same compiled functions build features in the live detector, in re-warming after
a model swap and in training (:func:`series_features`), so the model always sees
exactly the inputs it was trained on.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .halflife import halflife_weight
from .state import Column

__all__ = ["GLITCH", "GLITCH_AFTER", "N_FEATURES", "Z_CLIP", "FeatureBuilder", "normalise", "norm_std", "replay_features", "series_features"]

N_FEATURES = 6
Z_CLIP = 10.0
# The glitch rule below starts once the normaliser has this many readings: before
# that its scale is a plain average of the little the sensor has shown.
GLITCH_AFTER = 16
# A reading more than GLITCH scales from the mean, when its predecessor was not, is a
# glitch: it is scored, but neither the normaliser nor any evidence learns from it
# (they would otherwise take one absurd value for the sensor's normal and stay blind
# to real anomalies for their whole memory). The second such reading in a row is a
# real change (a level shift, a constant sensor starting to move) and is learnt.
GLITCH = 1000.0
DT_CLIP = 5.0
DAY = 86400.0
WEEK = 7 * DAY
TWO_PI = 2.0 * math.pi


@njit(cache=True)
def norm_std(mean: float, var: float) -> float:
    """Normalising scale with a floor, so constant sensors do not divide by zero."""
    floor = 1e-3 * max(abs(mean), 1.0)
    return math.sqrt(var + floor * floor)


@njit(cache=True)
def _clip(x: float, lim: float) -> float:
    return min(max(x, -lim), lim)


@njit(cache=True)
def time_features(t: float, x: np.ndarray) -> None:
    """Time of day and of week (UTC) as sine/cosine pairs into ``x[2:6]``."""
    day = TWO_PI * (t % DAY) / DAY
    week = TWO_PI * (t % WEEK) / WEEK
    x[2] = math.sin(day)
    x[3] = math.cos(day)
    x[4] = math.sin(week)
    x[5] = math.cos(week)


@njit(cache=True)
def normalise(r: np.void, t: float, v: float, x: np.ndarray, alpha_min: float) -> tuple[float, float, bool, float]:
    """Features of one reading into ``x``, updating the sensor's normaliser in row ``r``.

    Returns the mean and scale *after* including this reading (the scale of the
    forecast made from it), whether the reading is a glitch (see :data:`GLITCH`), and
    how many typical intervals (as known before it) it came after the one before
    (1 until the sensor has an interval to compare with).
    """
    count = r["count"]
    mean = r["norm_mean"]
    var = r["norm_var"]
    logdt_mean = r["logdt_mean"]
    first = count == 0
    z = 0.0 if first else _clip((v - mean) / norm_std(mean, var), Z_CLIP)
    logdt = math.log(max(1.0 if first else t - r["last_ts"], 1e-3))
    x[0] = z
    steps = 1.0 if count < 2 else math.exp(logdt - logdt_mean)
    x[1] = 0.0 if count < 2 else _clip(logdt - logdt_mean, DT_CLIP)
    time_features(t, x)

    # EWMA with a 1/n warm start: the exact running mean for the first readings, then
    # a long memory that still follows slow drift.
    n = count + 1
    alpha = max(1.0 / n, alpha_min)
    delta = v - mean
    glitch = False
    if count >= GLITCH_AFTER:
        beyond = abs(delta) > GLITCH * norm_std(mean, var)
        glitch = beyond and r["beyond"] == 0
        r["beyond"] = 1 if beyond else 0
    if not glitch:
        mean = mean + alpha * delta
        var = (1.0 - alpha) * (var + alpha * delta * delta)
    # interval statistics start at the second reading
    if count == 1:
        logdt_mean = logdt
    elif count > 1:
        logdt_mean = logdt_mean + max(1.0 / count, alpha_min) * (logdt - logdt_mean)
    r["count"] = n
    r["norm_mean"] = mean
    r["norm_var"] = var
    r["last_ts"] = t
    r["logdt_mean"] = logdt_mean
    return mean, norm_std(mean, var), glitch, steps


@njit(cache=True)
def in_place_of_glitch(x: np.ndarray, forecast: float, mean: float, std: float) -> None:
    """Show the network the value it forecast instead of a glitch, so its state stays on
    the sensor's track (``x`` as :func:`normalise` filled it)."""
    if math.isfinite(forecast):
        x[0] = _clip((forecast - mean) / std, Z_CLIP)


@njit(cache=True)
def replay_features(r: np.void, ts: np.ndarray, values: np.ndarray, n: int, x: np.ndarray) -> None:
    """Features ``x [n, F]`` of past readings with the sensor's *current* normaliser.

    Used to re-warm hidden states and to train on the history ring: the normaliser
    of the time is not kept, and the current one is what the model will see next.
    """
    mean = r["norm_mean"]
    std = norm_std(mean, r["norm_var"])
    for i in range(n):
        x[i, 0] = _clip((values[i] - mean) / std, Z_CLIP)
        if i == 0:
            x[i, 1] = 0.0
        else:
            logdt = math.log(max(ts[i] - ts[i - 1], 1e-3))
            x[i, 1] = _clip(logdt - r["logdt_mean"], DT_CLIP)
        time_features(ts[i], x[i])


@njit(cache=True)
def _series_features(rows: np.ndarray, ts: np.ndarray, values: np.ndarray, alpha_min: float, out: np.ndarray) -> None:
    for s in range(ts.shape[0]):
        r = rows[s]
        for t in range(ts.shape[1]):
            normalise(r, ts[s, t], values[s, t], out[s, t], alpha_min)


class FeatureBuilder:
    """The normaliser's state columns and its setting (the compiled pass does the work)."""

    def __init__(self, *, normaliser_halflife: float) -> None:
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
            Column("beyond", "int8", 0),  # the last reading was more than GLITCH scales off
        ]


def series_features(ts: np.ndarray, values: np.ndarray, *, normaliser_halflife: float) -> np.ndarray:
    """Features ``[S, T, F]`` of ``S`` series ``[S, T]`` (each in time order), each from a
    fresh normaliser, exactly as the live detector computes them (training data)."""
    ts = np.ascontiguousarray(np.atleast_2d(ts), dtype=np.float64)
    values = np.ascontiguousarray(np.atleast_2d(values), dtype=np.float64)
    fb = FeatureBuilder(normaliser_halflife=normaliser_halflife)
    rows = np.zeros(ts.shape[0], dtype=np.dtype([(c.name, c.dtype) for c in fb.columns()], align=True))
    for c in fb.columns():
        rows[c.name] = c.fill
    out = np.empty((*ts.shape, N_FEATURES), dtype=np.float32)
    _series_features(rows, ts, values, fb.alpha_min, out)
    return out
