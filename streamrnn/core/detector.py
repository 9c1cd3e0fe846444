"""The detector: readings in, forecasts, anomaly scores and alert events out.

This is the transport-free core that the Kafka worker and the offline commands wrap.
A batch is grouped by sensor and ordered by timestamp; its ``k``-th reading of every
sensor forms wave ``k``. Per-sensor bookkeeping (normaliser, scorer, alerter) runs one
vectorised numpy step per wave, and the GRU runs once per batch over all sensors'
(packed) sequences, so there is never a torch call per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .alerts import Alerter, AlertEvent, AlertParams, Transition
from .features import N_FEATURES, FeatureBuilder
from .forecaster import GRUForecaster
from .scoring import Scorer, ScoringParams
from .state import BankParams, CapacityError, Column, StateBank

__all__ = ["Detector", "ScoreResult"]


@dataclass
class ScoreResult:
    """Per-reading results in input order, and the alert events of the batch.

    Readings at or before their sensor's last timestamp are not scored:
    ``accepted`` is False for them and their numbers are NaN. ``surprise`` is how
    unusual each reading is; ``score``, the anomaly score, is the surprise at the
    onset of an incident and 0 while it merely goes on (see :mod:`.scoring`).
    ``is_anomaly`` and the alert events follow the surprise.
    """

    accepted: np.ndarray
    forecast: np.ndarray
    forecast_std: np.ndarray
    residual: np.ndarray
    score: np.ndarray
    surprise: np.ndarray
    is_anomaly: np.ndarray
    events: list[AlertEvent] = field(default_factory=list)
    event_index: list[int] = field(default_factory=list)

    @property
    def n_scored(self) -> int:
        """How many readings were scored."""
        return int(self.accepted.sum())


class Detector:
    """Stateful streaming detector for many sensors; see the module docstring."""

    def __init__(self, model: GRUForecaster, *, version: str = "0", scoring: ScoringParams | None = None,
                 alerts: AlertParams | None = None, bank: BankParams | None = None) -> None:
        """Serve ``model`` (named ``version`` in alerts); parameters left out take their defaults."""
        scoring = scoring or ScoringParams()
        bank = bank or BankParams()
        self.model = model.eval()
        self.model_version = str(version)
        self.features = FeatureBuilder(normaliser_halflife=scoring.normaliser_halflife)
        self.scorer = Scorer(scoring)
        self.alerter = Alerter(alerts or AlertParams())
        cols = [
            Column("h", "float32", 0.0, (model.state_size,)),
            Column("fc_mean", "float64", np.nan),
            Column("fc_std", "float64", np.nan),
            Column("fc_scale", "float64", np.nan),
            Column("last_score", "float64", 0.0),
            # which source (e.g. Kafka partition) owns the sensor; set by the caller
            Column("owner", "int32", -1),
        ]
        # The history ring: each sensor's last readings, for re-warming after a model
        # swap and as training data for scheduled retraining.
        self.history_length = bank.history_length
        if self.history_length:
            cols += [Column("hist_v", "float32", 0.0, (self.history_length,)),
                     Column("hist_t", "float64", 0.0, (self.history_length,)),
                     Column("hist_n", "int64", 0)]
        cols += self.features.columns() + self.scorer.columns() + self.alerter.columns()
        self.bank = StateBank(cols, max_sensors=bank.max_sensors, initial_capacity=bank.initial_capacity)

    @property
    def active_sensors(self) -> int:
        """Sensors currently held in the state bank."""
        return len(self.bank)

    # -- history, re-warm and model swap ------------------------------------------------
    def history(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sensors' rings in time order: ``(ts [S, L], values [S, L], valid [S, L])``.

        Rings that are not full yet are left-aligned and padded at the end.
        """
        L = self.history_length
        cols = self.bank.arrays
        n = cols["hist_n"][slots]
        filled = np.minimum(n, L)
        # oldest element: position n % L when full, else 0
        start = np.where(n >= L, n % L, 0)
        idx = (start[:, None] + np.arange(L)[None, :]) % L
        valid = np.arange(L)[None, :] < filled[:, None]
        ts = np.take_along_axis(cols["hist_t"][slots], idx, axis=1)
        values = np.take_along_axis(cols["hist_v"][slots], idx, axis=1).astype(np.float64)
        return ts, values, valid

    def ring_features(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GRU inputs ``[S, L, F]`` from the sensors' rings, the number of real steps, and
        the rings' timestamps ``[S, L]`` (real steps first)."""
        ts, values, valid = self.history(slots)
        x = self.features.replay(self.bank.arrays, slots, ts, values, valid)
        return x, valid.sum(axis=1), ts

    def swap_model(self, model: GRUForecaster, version: str, chunk: int = 4096) -> int:
        """Serve ``model`` from the next batch on; re-warm every sensor from its ring.

        Each sensor's hidden state and pending forecast are recomputed by running its
        history ring through the new model (batched), so its next reading is scored by
        a warm state. Returns how many sensors were re-warmed.
        """
        self.model = model.eval()
        self.model_version = str(version)
        if not self.history_length:
            self.bank.arrays["h"][:] = 0.0
            return 0
        _, slots = self.bank.held()
        cols = self.bank.arrays
        cols["h"][slots] = 0.0
        warmed = 0
        for i in range(0, len(slots), chunk):
            sl = slots[i:i + chunk]
            x, lengths, _ = self.ring_features(sl)
            keep = lengths > 0
            sl, x, lengths = sl[keep], x[keep], lengths[keep]
            if len(sl) == 0:
                continue
            with torch.inference_mode():
                mz, logvar, h_n = self.model(torch.from_numpy(x), None, torch.from_numpy(lengths))
            last = lengths - 1
            rows = np.arange(len(sl))
            mean = cols["norm_mean"][sl]
            std = self.features.std(mean, cols["norm_var"][sl])
            cols["h"][sl] = h_n.numpy()
            cols["fc_mean"][sl] = mean + std * mz.numpy()[rows, last]
            cols["fc_std"][sl] = std * np.exp(0.5 * logvar.numpy()[rows, last].astype(np.float64))
            cols["fc_scale"][sl] = std
            warmed += len(sl)
        return warmed

    def top_sensors(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` sensors whose latest reading scored highest, highest first."""
        ids, slots = self.bank.held()
        if not ids or k <= 0:
            return []
        scores = self.bank.arrays["last_score"][slots]
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(ids[i], float(scores[i])) for i in top.tolist()]

    def process(self, sensor_ids: Sequence[str], ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                owner: np.ndarray | None = None) -> ScoreResult:
        """Score a batch of readings (any order, any mix of sensors).

        ``owner`` (optional, one int per reading) records which source owns each
        sensor, e.g. the Kafka partition, so its state can be saved and moved per owner.
        """
        ts = np.asarray(ts, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        n = len(sensor_ids)
        if not (len(ts) == len(values) == n):
            raise ValueError("sensor_ids, ts and values must have the same length")
        try:
            return self._process(sensor_ids, ts, values, owner)
        except CapacityError:
            if n < 2:
                raise
            # More distinct sensors than the bank holds: score the batch in halves.
            h = n // 2
            o1, o2 = (None, None) if owner is None else (owner[:h], owner[h:])
            return _concat(self.process(sensor_ids[:h], ts[:h], values[:h], o1), self.process(sensor_ids[h:], ts[h:], values[h:], o2), h)

    def _process(self, sensor_ids: Sequence[str], ts: np.ndarray, values: np.ndarray, owner: np.ndarray | None) -> ScoreResult:
        n = len(sensor_ids)
        res = ScoreResult(
            accepted=np.zeros(n, dtype=bool),
            forecast=np.full(n, np.nan), forecast_std=np.full(n, np.nan),
            residual=np.full(n, np.nan), score=np.full(n, np.nan), surprise=np.full(n, np.nan),
            is_anomaly=np.zeros(n, dtype=bool),
        )
        if n == 0:
            return res
        bank = self.bank
        cols = bank.arrays
        slots = bank.assign(sensor_ids)
        cols = bank.arrays  # assign may have grown the arrays
        if owner is not None:
            cols["owner"][slots] = owner

        # Group by sensor, order by time (stable on arrival); drop replays/duplicates.
        order = np.lexsort((np.arange(n), ts, slots))
        s_sorted, t_sorted = slots[order], ts[order]
        first = np.ones(n, dtype=bool)
        first[1:] = s_sorted[1:] != s_sorted[:-1]
        stale = t_sorted <= cols["last_ts"][s_sorted]
        stale[1:] |= ~first[1:] & (t_sorted[1:] == t_sorted[:-1])
        keep = order[~stale]
        m = len(keep)
        if m == 0:
            return res
        ks, kt, kv = slots[keep], ts[keep], values[keep]
        first = np.ones(m, dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        starts = np.flatnonzero(first)
        lengths = np.diff(np.append(starts, m))
        group = np.cumsum(first) - 1
        wave = np.arange(m) - starts[group]
        uslots = ks[starts]
        n_waves = int(lengths.max())
        waves = [starts[lengths > k] + k for k in range(n_waves)]

        # Phase A: normaliser and features, wave by wave.
        x = np.empty((m, N_FEATURES), dtype=np.float32)
        mean_after = np.empty(m)
        std_after = np.empty(m)
        count_after = np.empty(m, dtype=np.int64)
        for sel in waves:
            x[sel], mean_after[sel], std_after[sel] = self.features.step(cols, ks[sel], kt[sel], kv[sel])
            count_after[sel] = cols["count"][ks[sel]]
            if self.history_length:
                sl = ks[sel]
                pos = cols["hist_n"][sl] % self.history_length
                cols["hist_v"][sl, pos] = kv[sel]
                cols["hist_t"][sl, pos] = kt[sel]
                cols["hist_n"][sl] += 1

        # Phase B: one GRU pass over every sensor's sequence in this batch.
        xp = np.zeros((len(uslots), n_waves, N_FEATURES), dtype=np.float32)
        xp[group, wave] = x
        with torch.inference_mode():
            mz, logvar, h_n = self.model(torch.from_numpy(xp), torch.from_numpy(cols["h"][uslots]), torch.from_numpy(lengths))
        cols["h"][uslots] = h_n.numpy()
        mz = mz.numpy()[group, wave].astype(np.float64)
        sz = np.exp(0.5 * logvar.numpy()[group, wave].astype(np.float64))
        next_mean = mean_after + std_after * mz
        next_std = std_after * sz
        # The forecast for a reading was made at the sensor's previous reading.
        fc_mean = np.empty(m)
        fc_std = np.empty(m)
        fc_scale = np.empty(m)  # the sensor's normalising scale when the forecast was made
        fc_mean[1:], fc_std[1:], fc_scale[1:] = next_mean[:-1], next_std[:-1], std_after[:-1]
        fc_mean[starts], fc_std[starts], fc_scale[starts] = cols["fc_mean"][uslots], cols["fc_std"][uslots], cols["fc_scale"][uslots]
        last = starts + lengths - 1
        cols["fc_mean"][uslots], cols["fc_std"][uslots], cols["fc_scale"][uslots] = next_mean[last], next_std[last], std_after[last]

        # Phase C: scores and alert decisions, wave by wave (both are sequential in time).
        residual = np.empty(m)
        score = np.empty(m)
        high = np.zeros(m, dtype=bool)
        opened = np.zeros(m, dtype=bool)
        resolved = np.zeros(m, dtype=bool)
        opened_ts = np.empty(m)
        peak = np.empty(m)
        surprise = np.empty(m)
        for sel in waves:
            sl = ks[sel]
            interval = np.exp(cols["logdt_mean"][sl])
            residual[sel], surprise[sel], score[sel] = self.scorer.step(cols, sl, kt[sel], kv[sel], fc_mean[sel], fc_std[sel],
                                                                        fc_scale[sel], mean_after[sel], interval, count_after[sel])
            # Alerts follow the surprise: it stays high while the sensor misbehaves,
            # which is what keeps an alert open until the sensor is back to normal.
            high[sel], opened[sel], resolved[sel] = self.alerter.step(cols, sl, kt[sel], surprise[sel], count_after[sel])
            opened_ts[sel], peak[sel] = cols["opened_ts"][sl], cols["peak_score"][sl]
            cols["last_score"][sl] = surprise[sel]

        res.accepted[keep] = True
        res.forecast[keep] = fc_mean
        res.forecast_std[keep] = fc_std
        res.residual[keep] = residual
        res.score[keep] = np.clip(score, 0.0, 1.0)
        res.surprise[keep] = np.clip(surprise, 0.0, 1.0)
        res.is_anomaly[keep] = high
        ev_pos = np.flatnonzero(opened | resolved)
        ev_pos = ev_pos[np.argsort(kt[ev_pos], kind="stable")]  # events in time order
        for p in ev_pos.tolist():
            i = int(keep[p])
            res.events.append(AlertEvent(
                sensor_id=str(sensor_ids[i]), ts=float(kt[p]), value=float(kv[p]), forecast=float(fc_mean[p]),
                residual=float(residual[p]), anomaly_score=float(res.surprise[i]), threshold=self.alerter.threshold,
                model_version=self.model_version, event=Transition.OPEN if opened[p] else Transition.RESOLVED,
                opened_ts=float(opened_ts[p]), peak_score=float(min(peak[p], 1.0)),
            ))
            res.event_index.append(i)
        return res


def _concat(a: ScoreResult, b: ScoreResult, offset: int) -> ScoreResult:
    return ScoreResult(
        accepted=np.concatenate([a.accepted, b.accepted]), forecast=np.concatenate([a.forecast, b.forecast]),
        forecast_std=np.concatenate([a.forecast_std, b.forecast_std]), residual=np.concatenate([a.residual, b.residual]),
        score=np.concatenate([a.score, b.score]), surprise=np.concatenate([a.surprise, b.surprise]), is_anomaly=np.concatenate([a.is_anomaly, b.is_anomaly]),
        events=a.events + b.events, event_index=a.event_index + [i + offset for i in b.event_index],
    )
