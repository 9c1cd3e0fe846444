"""The compiled passes: a whole batch of readings through every step of the detector.

:func:`score_batch` visits the readings of one batch in per-sensor time order and
runs, for each, the normaliser, one GRU step, the forecast for the sensor's next
reading, every piece of evidence, the onset filter and the alerter: the cost is per
reading, with no numpy call per reading and none per "wave" of a sensor's readings,
however the readings spread over sensors. Readings at or before their sensor's last
timestamp are skipped (their ``accepted`` stays False).

:func:`rewarm` recomputes hidden states and pending forecasts from the history rings
(after a model swap); :func:`ring_features` gives the rings as training sequences.
Numba compiles these on first use and caches the machine code on disk. They run
without the GIL, so the worker's other threads (a state save, the Kafka clients) run
beside a batch instead of waiting for its end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .alerts import OPENED, alert_step, silence_limit
from .evidence import PATTERN_LENGTH
from .features import N_FEATURES, in_place_of_glitch, norm_std, normalise, replay_features, time_features
from .forecaster import GRUScratch, GRUWeights, gru_step
from .scoring import ScoringKnobs, score_step

__all__ = ["BatchOutput", "advance_clocks", "overdue", "rewarm", "ring_features", "score_batch"]


class BatchOutput(NamedTuple):
    """Per-reading results of :func:`score_batch`, in input order."""

    accepted: np.ndarray  # bool
    forecast: np.ndarray  # float64, NaN where not accepted or no forecast yet
    forecast_std: np.ndarray
    residual: np.ndarray
    score: np.ndarray
    surprise: np.ndarray
    is_anomaly: np.ndarray  # bool
    event: np.ndarray  # int8: 0 none, 1 opened, 2 resolved
    opened_ts: np.ndarray  # float64, for events
    peak: np.ndarray  # float64, for events
    reset: np.ndarray  # bool: the sensor's state turned non-finite here and was reset
    silence: np.ndarray  # int8: 0, or this reading ends a silence: 1 an open no_data alert, 2 one not yet opened
    silent_since: np.ndarray  # float64: when that no_data alert began
    silent_value: np.ndarray  # float64: the sensor's last value before it
    evidence: np.ndarray  # int8, for events: the evidence that opened the alert (scoring.EVIDENCE)
    evidence_p: np.ndarray  # float64, for events: its probability

    @classmethod
    def empty(cls, n: int) -> BatchOutput:
        """Outputs for ``n`` readings, none accepted yet."""
        def nan() -> np.ndarray:
            return np.full(n, np.nan)
        return cls(np.zeros(n, bool), nan(), nan(), nan(), nan(), nan(), np.zeros(n, bool), np.zeros(n, np.int8),
                   nan(), nan(), np.zeros(n, bool), np.zeros(n, np.int8), nan(), nan(), np.full(n, -1, np.int8), nan())


@njit(cache=True, nogil=True)
def score_batch(rows: np.ndarray, raw: np.ndarray, fresh: np.ndarray, order: np.ndarray, slots: np.ndarray, ts: np.ndarray,
                values: np.ndarray, weights: GRUWeights, scratch: GRUScratch, norm_alpha: float, sk: ScoringKnobs,
                rules: np.ndarray, out: BatchOutput) -> int:
    """Score readings ``order`` (indices into ``slots``/``ts``/``values``, sorted by sensor
    then time) against state ``rows``, each sensor alerting by its rule in ``rules``
    (indexed by its ``rule`` column); returns how many alert events they raised.

    ``raw`` is ``rows`` as bytes ``[rows, row size]`` and ``fresh`` a new sensor's row as
    bytes: a sensor whose state stops being finite is reset to it at once.
    """
    x = np.zeros(N_FEATURES, dtype=np.float32)
    scratch_pattern = np.zeros(PATTERN_LENGTH + (rows[0]["pattern_kept"].shape[1] if len(rows) else 0), dtype=np.float32)
    n_events = 0
    for i in order:
        r = rows[slots[i]]
        t = ts[i]
        v = values[i]
        if not t > r["last_ts"]:  # a replay or a duplicate: already reflected in the state
            continue
        ak = rules[r["rule"]]
        since = r["silent_since"]
        if math.isfinite(since):  # back after a silence a scan already reported
            out.silence[i] = 1
        else:  # a silence that ended before any scan could see it
            since = r["last_ts"] + silence_limit(r, ak)
            out.silence[i] = 2 if t > since else 0
        if out.silence[i]:
            out.silent_since[i] = since
            out.silent_value[i] = r["last_value"]
            r["silent_since"] = math.nan
            n_events += out.silence[i]
        fc_mean = r["fc_mean"]  # made at the sensor's previous reading
        fc_std = r["fc_std"]
        fc_scale = r["fc_scale"]  # the normalising scale when it was made
        prev_ts = r["last_ts"]
        mean, std, glitch, steps = normalise(r, t, v, x, norm_alpha)
        if glitch:
            in_place_of_glitch(x, fc_mean, mean, std)
        count = r["count"]
        hist = r["hist_v"]
        length = hist.shape[0]
        if length:
            pos = r["hist_n"] % length
            hist[pos] = fc_mean if glitch and math.isfinite(fc_mean) else v  # the ring is training data
            # float32 intervals rather than float64 times: half the bytes, and an
            # interval keeps microseconds where an epoch time in float32 would keep minutes
            r["hist_dt"][pos] = t - prev_ts if math.isfinite(prev_ts) else 0.0
            r["hist_n"] += 1
        mz, logvar = gru_step(r["h"], x, weights, scratch)
        r["fc_mean"] = mean + std * mz
        r["fc_std"] = std * math.exp(0.5 * logvar)
        r["fc_scale"] = std
        if not (math.isfinite(r["fc_mean"]) and math.isfinite(r["fc_std"]) and math.isfinite(std)):
            # Values near the float range can overflow the normaliser or the network:
            # start the sensor afresh from this reading's time rather than leave it blind.
            # its partition, alert rule and tags are no part of its history
            owner, rule, tag_set = r["owner"], r["rule"], r["tag_set"]
            raw[slots[i]] = fresh
            r["owner"], r["rule"], r["tag_set"] = owner, rule, tag_set
            r["last_ts"] = t
            out.accepted[i] = True
            out.score[i] = 0.0
            out.surprise[i] = 0.0
            out.reset[i] = True
            continue
        residual, surprise, score, evidence, p = score_step(r, t, v, fc_mean, fc_std, fc_scale, mean, math.exp(r["logdt_mean"]), steps,
                                               count, glitch, sk, scratch_pattern)
        # Alerts follow the surprise: it stays high while the sensor misbehaves, which
        # is what keeps an alert open until the sensor is back to normal.
        high, event = alert_step(r, t, surprise, count, ak)
        if event == OPENED:
            r["open_evidence"] = evidence
            r["open_p"] = p
        r["last_score"] = surprise
        out.accepted[i] = True
        out.forecast[i] = fc_mean
        out.forecast_std[i] = fc_std
        out.residual[i] = residual
        out.score[i] = min(max(score, 0.0), 1.0)
        out.surprise[i] = min(max(surprise, 0.0), 1.0)
        out.is_anomaly[i] = high
        if event:
            out.event[i] = event
            out.opened_ts[i] = r["opened_ts"]
            out.peak[i] = r["peak_score"]
            out.evidence[i] = r["open_evidence"]
            out.evidence_p[i] = r["open_p"]
            n_events += 1
    return n_events


@njit(cache=True)
def advance_clocks(rows: np.ndarray, slots: np.ndarray, ts: np.ndarray, accepted: np.ndarray, clocks: np.ndarray) -> None:
    """Move ``clocks[owner + 1]`` on to the newest accepted reading of each owner
    (``clocks`` already long enough for every owner in the batch)."""
    for i in range(len(ts)):
        if accepted[i]:
            o = rows[slots[i]]["owner"] + 1
            if ts[i] > clocks[o]:
                clocks[o] = ts[i]


@njit(cache=True)
def overdue(rows: np.ndarray, last_seen: np.ndarray, used: int, clocks: np.ndarray, rules: np.ndarray,
            found: np.ndarray) -> int:
    """Open a no_data alert for each held sensor whose last reading is older, by its
    owner's clock (``clocks[owner + 1]``), than its silence limit; their slots go into
    ``found``. Returns how many. Slots ``< used`` with ``last_seen > 0`` are held."""
    n = 0
    for s in range(used):
        if last_seen[s] <= 0:
            continue
        r = rows[s]
        if math.isfinite(r["silent_since"]):
            continue
        o = r["owner"] + 1
        if o < 0 or o >= len(clocks):
            continue
        since = r["last_ts"] + silence_limit(r, rules[r["rule"]])
        if clocks[o] > since:
            r["silent_since"] = since
            found[n] = s
            n += 1
    return n


@njit(cache=True)
def _ring(r: np.void, ts: np.ndarray, values: np.ndarray) -> int:
    """A sensor's history ring in time order into ``ts``/``values``; returns its length.

    The newest reading's time is the sensor's ``last_ts``; each earlier one is found by
    stepping back over the intervals the ring keeps.
    """
    hist_v = r["hist_v"]
    hist_dt = r["hist_dt"]
    length = hist_v.shape[0]
    total = r["hist_n"]
    n = min(total, length)
    start = total % length if total >= length else 0
    t = r["last_ts"]
    for i in range(n - 1, -1, -1):
        j = (start + i) % length
        ts[i] = t
        values[i] = hist_v[j]
        t -= hist_dt[j]
    return n


@njit(cache=True, nogil=True)
def rewarm(rows: np.ndarray, slots: np.ndarray, weights: GRUWeights, scratch: GRUScratch) -> int:
    """Recompute each sensor's hidden state and pending forecast by running its history
    ring through the network from a zero state; returns how many had a ring."""
    length = rows[0]["hist_v"].shape[0] if len(rows) else 0
    ts = np.zeros(length)
    values = np.zeros(length)
    x = np.zeros((length, N_FEATURES), dtype=np.float32)
    warmed = 0
    for s in slots:
        r = rows[s]
        h = r["h"]
        h[:] = 0.0
        n = _ring(r, ts, values) if length else 0
        if n == 0:
            continue
        replay_features(r, ts, values, n, x)
        mz = 0.0
        logvar = 0.0
        for i in range(n):
            mz, logvar = gru_step(h, x[i], weights, scratch)
        mean = r["norm_mean"]
        std = norm_std(mean, r["norm_var"])
        r["fc_mean"] = mean + std * mz
        r["fc_std"] = std * math.exp(0.5 * logvar)
        r["fc_scale"] = std
        warmed += 1
    return warmed


@njit(cache=True, nogil=True)
def ring_features(rows: np.ndarray, slots: np.ndarray, x: np.ndarray, lengths: np.ndarray, ts: np.ndarray) -> None:
    """Training sequences from the rings: features ``x [S, L, F]`` with each sensor's
    current normaliser, real lengths and timestamps ``ts [S, L]`` (real steps first;
    the padding holds features of zeros at time 0)."""
    length = x.shape[1]
    values = np.zeros(length)
    for i in range(len(slots)):
        r = rows[slots[i]]
        n = _ring(r, ts[i], values)
        replay_features(r, ts[i], values, n, x[i])
        for j in range(n, length):
            ts[i, j] = 0.0
            x[i, j, 0] = 0.0
            x[i, j, 1] = 0.0
            time_features(0.0, x[i, j])
        lengths[i] = n
