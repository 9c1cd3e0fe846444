"""The detector: readings in, forecasts, anomaly scores and alert events out.

This is the transport-free core that the Kafka worker and the offline commands wrap.
A batch is looked up in the state bank (one slot per sensor), ordered by sensor and
time, and handed to one compiled pass (:func:`~.kernel.score_batch`) that runs every
step for every reading; Python touches the batch as whole arrays, and each alert
event, never each reading.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .alerts import Alerter, AlertEvent, AlertKind, AlertParams, Transition
from .features import N_FEATURES, FeatureBuilder
from .forecaster import GRUForecaster, scratch_for, weights_of
from .kernel import BatchOutput, advance_clocks, overdue, rewarm, ring_features, score_batch
from .scoring import EVIDENCE, Scorer, ScoringParams
from .state import BankParams, CapacityError, Column, StateBank
from .tags import NO_TAGS, Tags, TagTable

__all__ = ["BAND_SIGMAS", "Detector", "ScoreResult"]

BAND_SIGMAS = 3.0
"""The forecast band is ``forecast -+ BAND_SIGMAS * forecast_std`` (scores stream, plots)."""

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """Per-reading results in input order, and the alert events of the batch.

    Readings at or before their sensor's last timestamp are not scored:
    ``accepted`` is False for them and their numbers are NaN. ``surprise`` is how
    unusual each reading is; ``score``, the anomaly score, is the surprise at the
    onset of an incident and 0 while it merely goes on (see :mod:`.scoring`).
    ``is_anomaly`` and the anomaly alert events follow the surprise. ``event_index``
    is the reading each event came with (-1 for a ``no_data`` alert opened because
    other readings moved its partition's clock on) and ``event_owner`` the owner of
    the event's sensor.
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
    event_owner: list[int] = field(default_factory=list)
    tag_keys: np.ndarray | None = None
    """The key (in :attr:`Detector.tags`) of each reading's tags, when tags were given."""

    @property
    def n_scored(self) -> int:
        """How many readings were scored."""
        return int(self.accepted.sum())

    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """The forecast band per reading, ``(lower, upper)`` (NaN where there is no forecast)."""
        half = BAND_SIGMAS * self.forecast_std
        return self.forecast - half, self.forecast + half


class Detector:
    """Stateful streaming detector for many sensors; see the module docstring."""

    def __init__(self, model: GRUForecaster, *, version: str = "0", scoring: ScoringParams | None = None,
                 alerts: AlertParams | None = None, bank: BankParams | None = None) -> None:
        """Serve ``model`` (named ``version`` in alerts); parameters left out take their defaults."""
        scoring = scoring or ScoringParams()
        bank = bank or BankParams()
        self.features = FeatureBuilder(normaliser_halflife=scoring.normaliser_halflife)
        self.scorer = Scorer(scoring)
        self.alerter = Alerter(alerts or AlertParams())
        self._serve(model, version)
        # The history ring: each sensor's last readings, for re-warming after a model
        # swap and as training data for scheduled retraining.
        self.history_length = bank.history_length
        cols = [
            Column("h", "float32", 0.0, (model.state_size,)),
            Column("fc_mean", "float64", np.nan),
            Column("fc_std", "float64", np.nan),
            Column("fc_scale", "float64", np.nan),
            Column("last_score", "float64", 0.0),
            # which source (e.g. Kafka partition) owns the sensor; set by the caller
            Column("owner", "int32", -1),
            Column("hist_v", "float32", 0.0, (self.history_length,)),
            Column("hist_dt", "float32", 0.0, (self.history_length,)),  # seconds since the reading before
            Column("hist_n", "int64", 0),
            Column("tag_set", "int64", NO_TAGS),  # key of its latest tags in self.tags
        ]
        cols += self.features.columns() + self.scorer.columns() + self.alerter.columns()
        self.bank = StateBank(cols, max_sensors=bank.max_sensors, initial_capacity=bank.initial_capacity,
                              group_column="owner")
        self.resets_total = 0  # sensors whose state became non-finite and was started afresh
        # The event time each owner's readings have reached, at [owner + 1]: silence is
        # measured against it, so a replay raises the same no_data alerts as live.
        self.clocks = np.full(1, -np.inf)
        self._scanned = self.clocks.copy()  # the clocks at the last scan for silent sensors
        self.tags = TagTable()

    def _serve(self, model: GRUForecaster, version: str) -> None:
        self.model = model.eval()
        self.model_version = str(version)
        self._weights = weights_of(self.model)
        self._scratch = scratch_for(self._weights)
        # what /readyz reports: a model whose weights are not all finite forecasts nothing
        self.model_ok = all(np.isfinite(w).all() for w in self._weights if isinstance(w, np.ndarray))

    def warm_up(self) -> None:
        """Load (or on a first run, compile) the scoring pass now, so the first batch does
        not wait for it; touches no sensor's state."""
        rows = self.bank.rows
        score_batch(rows, self.bank.raw(), self.bank.fresh_bytes, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                    np.zeros(0), np.zeros(0), self._weights, self._scratch, self.features.alpha_min, self.scorer.knobs,
                    self.alerter.rules, BatchOutput.empty(0))

    @property
    def active_sensors(self) -> int:
        """Sensors currently held in the state bank."""
        return len(self.bank)

    # -- history, re-warm and model swap ------------------------------------------------
    def ring_features(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GRU inputs ``[S, L, F]`` from the sensors' rings, the number of real steps, and
        the rings' timestamps ``[S, L]`` (real steps first)."""
        L = self.history_length
        x = np.zeros((len(slots), L, N_FEATURES), dtype=np.float32)
        lengths = np.zeros(len(slots), dtype=np.int64)
        ts = np.zeros((len(slots), L))
        ring_features(self.bank.rows, np.asarray(slots, dtype=np.int64), x, lengths, ts)
        return x, lengths, ts

    def swap_model(self, model: GRUForecaster, version: str) -> int:
        """Serve ``model`` from the next batch on; re-warm every sensor from its ring.

        Each sensor's hidden state and pending forecast are recomputed by running its
        history ring through the new model, so its next reading is scored by a warm
        state. Returns how many sensors were re-warmed.
        """
        self._serve(model, version)
        _, slots = self.bank.held()
        n = int(rewarm(self.bank.rows, slots, self._weights, self._scratch))
        self.bank.mark_changed(slots)  # every hidden state is new: the next checkpoint saves them all
        return n

    def top_sensors(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` sensors whose latest reading scored highest, highest first."""
        ids, slots = self.bank.held()
        if not ids or k <= 0:
            return []
        scores = self.bank["last_score"][slots]
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(ids[i], float(scores[i])) for i in top.tolist()]

    # -- scoring ---------------------------------------------------------------------------
    def adopt(self, slots: np.ndarray, *, owner: int, tags: dict[str, dict[str, str]] | None = None) -> None:
        """Take in restored sensors: mark their owner, match their ids to the alert
        rules of this configuration (saved rules are not trusted: the overrides may have
        changed) and learn the tag table saved with them."""
        rows = self.bank.rows
        rows["owner"][slots] = owner
        self._match_rules(slots, np.ones(len(slots), dtype=bool))
        if tags:
            self.tags.learn(tags)

    def process(self, sensor_ids: Sequence[str], ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                owner: np.ndarray | None = None, *, tags: Sequence[Tags] | None = None) -> ScoreResult:
        """Score a batch of readings (any order, any mix of sensors).

        ``owner`` (optional, one int per reading) records which source owns each
        sensor, e.g. the Kafka partition, so its state can be saved and moved per owner.
        ``tags`` (optional, one per reading) become each sensor's tags, the latest
        tagged reading's winning (an untagged reading changes nothing); alert events
        carry them.
        """
        ts = np.ascontiguousarray(ts, dtype=np.float64)
        values = np.ascontiguousarray(values, dtype=np.float64)
        n = len(sensor_ids)
        if not (len(ts) == len(values) == n) or (tags is not None and len(tags) != n):
            raise ValueError("sensor_ids, ts, values (and tags) must have the same length")
        try:
            return self._process(sensor_ids, ts, values, owner, tags)
        except CapacityError:
            if n < 2:
                raise
            # More distinct sensors than the bank holds: score the batch in halves.
            h = n // 2
            o1, o2 = (None, None) if owner is None else (owner[:h], owner[h:])
            t1, t2 = (None, None) if tags is None else (tags[:h], tags[h:])
            return _concat(self.process(sensor_ids[:h], ts[:h], values[:h], o1, tags=t1),
                           self.process(sensor_ids[h:], ts[h:], values[h:], o2, tags=t2), h)

    def _match_rules(self, slots: np.ndarray, pending: np.ndarray) -> None:
        """Give the sensors in ``slots[pending]`` the rule their id matches."""
        if not pending.any():
            return
        todo = slots[pending]
        sensor_at = self.bank.sensor_at
        self.bank.rows["rule"][todo] = self.alerter.rule_of([sensor_at(s) or "" for s in todo.tolist()])

    def _process(self, sensor_ids: Sequence[str], ts: np.ndarray, values: np.ndarray, owner: np.ndarray | None,
                 tags: Sequence[Tags] | None) -> ScoreResult:
        n = len(sensor_ids)
        out = BatchOutput.empty(n)
        if n == 0:
            return _result(out, [], [], [])
        bank = self.bank
        slots = bank.assign(sensor_ids)
        rows = bank.rows  # assign may have grown the rows
        if owner is not None:
            rows["owner"][slots] = owner
        self._match_rules(slots, rows["rule"][slots] < 0)  # sensors new to the bank, when overrides exist
        # by sensor, then time; arrival order breaks ties (a later duplicate is dropped)
        order = np.lexsort((np.arange(n), ts, slots)) if n > 1 else np.zeros(1, dtype=np.int64)
        n_events = score_batch(rows, bank.raw(), bank.fresh_bytes, order, slots, ts, values, self._weights, self._scratch,
                               self.features.alpha_min, self.scorer.knobs, self.alerter.rules, out)
        if out.reset.any():
            reset = np.flatnonzero(out.reset)
            self.resets_total += len(reset)
            log.warning("state of %d sensor(s) became non-finite and was reset: %s", len(reset),
                        ", ".join(sorted({str(sensor_ids[i]) for i in reset.tolist()})[:10]))
        keys = None
        if tags is not None:
            keys = self.tags.keys(tags)
            # each sensor's newest tagged reading (``order`` is by sensor, then time); a
            # reading without tags leaves the sensor's as they were
            tagged = order[out.accepted[order] & (keys[order] != NO_TAGS)]
            sensor = slots[tagged]
            newest = tagged[np.append(sensor[1:] != sensor[:-1], True)] if len(tagged) else tagged
            rows["tag_set"][slots[newest]] = keys[newest]
        found = self._advance_clocks(rows, slots, ts, out.accepted)
        return _result(out, *self._events(sensor_ids, ts, values, slots, order, out, n_events, found), keys)

    def _advance_clocks(self, rows: np.ndarray, slots: np.ndarray, ts: np.ndarray, accepted: np.ndarray) -> np.ndarray:
        """Move each owner's clock to its newest reading; the slots of the sensors that
        fell silent by it (their no_data alerts are now open)."""
        if not accepted.any() or self.alerter.params.no_data_factor <= 0:
            return np.zeros(0, dtype=np.int64)
        need = int(rows["owner"][slots[accepted]].max()) + 2
        if need > len(self.clocks):
            grow = np.full(need - len(self.clocks), -np.inf)
            self.clocks, self._scanned = np.concatenate([self.clocks, grow]), np.concatenate([self._scanned, grow])
        advance_clocks(rows, slots, ts, accepted, self.clocks)
        # The scan costs a pass over the bank: run it once an owner's clock has moved on
        # by a quarter of the shortest silence. Alerts opened later carry the same time
        # (their deadline), and a sensor back before the scan gets both events from its reading.
        with np.errstate(invalid="ignore"):  # an owner with no reading yet: -inf - -inf is NaN
            moved = self.clocks - self._scanned
        if not (moved >= self.alerter.params.no_data_min_seconds / 4).any():
            return np.zeros(0, dtype=np.int64)
        self._scanned = self.clocks.copy()
        bank = self.bank
        found = np.zeros(bank.used, dtype=np.int64)
        n = overdue(bank.rows, bank.last_seen, bank.used, self.clocks, self.alerter.rules, found)
        bank.mark_changed(found[:n])  # their open no_data alerts are state
        return found[:n]

    def _events(self, sensor_ids: Sequence[str], ts: np.ndarray, values: np.ndarray, slots: np.ndarray, order: np.ndarray,
                out: BatchOutput, n_events: int, found: np.ndarray) -> tuple[list[AlertEvent], list[int], list[int]]:
        """The batch's alert events in time order, with their readings and owners."""
        rows = self.bank.rows
        made: list[tuple[float, AlertEvent, int, int]] = []
        thresholds = self.alerter.rules["threshold"]
        tags_of = self.tags.tags

        def no_data(sid: str, t: float, value: float, transition: Transition, since: float, r: np.void) -> AlertEvent:
            return AlertEvent(sensor_id=sid, ts=t, value=value, forecast=np.nan, residual=np.nan, anomaly_score=np.nan,
                              threshold=float(thresholds[r["rule"]]), model_version=self.model_version, event=transition,
                              opened_ts=since, peak_score=np.nan, kind=AlertKind.NO_DATA, tags=tags_of(int(r["tag_set"])))

        if n_events:
            # per-sensor order, then by time; a reading's no_data events come before its anomaly event
            for i in order[np.flatnonzero(out.event[order] | out.silence[order])].tolist():
                r = rows[slots[i]]
                sid, t, owner = str(sensor_ids[i]), float(ts[i]), int(r["owner"])
                since = float(out.silent_since[i])
                if out.silence[i] == 2:
                    made.append((since, no_data(sid, since, float(out.silent_value[i]), Transition.OPEN, since, r), -1, owner))
                if out.silence[i]:
                    made.append((t, no_data(sid, t, float(values[i]), Transition.RESOLVED, since, r), i, owner))
                if out.event[i]:
                    ev = int(out.evidence[i])
                    made.append((t, AlertEvent(
                        sensor_id=sid, ts=t, value=float(values[i]), forecast=float(out.forecast[i]),
                        residual=float(out.residual[i]), anomaly_score=float(out.surprise[i]),
                        threshold=float(thresholds[r["rule"]]), model_version=self.model_version,
                        event=Transition.OPEN if out.event[i] == 1 else Transition.RESOLVED,
                        opened_ts=float(out.opened_ts[i]), peak_score=float(min(out.peak[i], 1.0)),
                        evidence=EVIDENCE[ev] if 0 <= ev < len(EVIDENCE) else None, evidence_p=float(out.evidence_p[i]),
                        tags=tags_of(int(r["tag_set"])),
                    ), i, owner))
        if len(found):
            sensor_at = self.bank.sensor_at
            for s in found.tolist():
                r = rows[s]
                since = float(r["silent_since"])
                made.append((since, no_data(str(sensor_at(s)), since, float(r["last_value"]), Transition.OPEN, since, r), -1,
                             int(r["owner"])))
        made.sort(key=lambda m: m[0])  # stable: ties keep the order above
        return [m[1] for m in made], [m[2] for m in made], [m[3] for m in made]


def _result(out: BatchOutput, events: list[AlertEvent], index: list[int], owners: list[int],
            tag_keys: np.ndarray | None = None) -> ScoreResult:
    return ScoreResult(accepted=out.accepted, forecast=out.forecast, forecast_std=out.forecast_std, residual=out.residual,
                       score=out.score, surprise=out.surprise, is_anomaly=out.is_anomaly, events=events, event_index=index,
                       event_owner=owners, tag_keys=tag_keys)


def _concat(a: ScoreResult, b: ScoreResult, offset: int) -> ScoreResult:
    return ScoreResult(
        accepted=np.concatenate([a.accepted, b.accepted]), forecast=np.concatenate([a.forecast, b.forecast]),
        forecast_std=np.concatenate([a.forecast_std, b.forecast_std]), residual=np.concatenate([a.residual, b.residual]),
        score=np.concatenate([a.score, b.score]), surprise=np.concatenate([a.surprise, b.surprise]), is_anomaly=np.concatenate([a.is_anomaly, b.is_anomaly]),
        events=a.events + b.events, event_index=a.event_index + [i + offset if i >= 0 else i for i in b.event_index],
        event_owner=a.event_owner + b.event_owner,
        tag_keys=None if a.tag_keys is None or b.tag_keys is None else np.concatenate([a.tag_keys, b.tag_keys]),
    )
