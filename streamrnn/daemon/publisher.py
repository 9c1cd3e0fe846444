"""Everything the worker sends out about readings: alert events, scores and dead letters.

An alert event goes to the alerts topic (the durable record, keyed by sensor id), to
every configured sink (best effort) and to the log. A rejected message goes to the
dead-letter topic with its original key and bytes and the reason in headers (Kafka
Connect's convention). Delivery reports come back on the producer's thread: the
publisher keeps how far each alerts-topic partition has been acknowledged (saved with
the state, for de-duplication after a replay), counts what failed, and keeps every
refused record to send again: the checkpoint waits until none is left, so offsets are
never committed past an alert, score or dead letter the broker has not stored.

The scores stream (``kafka.scores_topic``) carries one record per scored reading,
keyed by sensor id: the reading, its forecast band and scores, for a time-series
database beside the alerts. It is produced a batch at a time, with one shared
failure callback, because it is the one output whose volume is the input's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import orjson

from ..core import AlertEvent, Transition
from ..ingest.files import round_significant
from ..ingest.messages import Reason
from .metrics import WorkerMetrics
from .sinks import AlertSink
from .transport.base import Delivery, Record, Transport

__all__ = ["Publisher"]

log = logging.getLogger(__name__)
alert_log = logging.getLogger("streamrnn.alerts")


class _Outgoing(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    kind: str  # "alert", "score" or "dead_letter"


class Publisher:
    """Publishes alert events and dead letters through one transport."""

    def __init__(self, transport: Transport, *, alerts_topic: str, dead_letter_topic: str, sinks: list[AlertSink],
                 metrics: WorkerMetrics, log_alerts: bool, scores_topic: str | None = None) -> None:
        self.transport = transport
        self.alerts_topic = alerts_topic
        self.scores_topic = scores_topic
        self.dead_letter_topic = dead_letter_topic
        self.sinks = sinks
        self.metrics = metrics
        self.log_alerts = log_alerts
        self._alerts_next: dict[int, int] = {}
        self._refused: list[_Outgoing] = []
        self._lock = threading.Lock()

    def dead_letter(self, rec: Record, reason: Reason, detail: str) -> None:
        """Send a rejected message to the dead-letter topic, the reason in its headers."""
        headers = [
            ("streamrnn.reason", reason.value.encode()),
            ("streamrnn.detail", detail.encode("utf-8", "replace")),
            ("streamrnn.topic", rec.topic.encode()),
            ("streamrnn.partition", str(rec.partition).encode()),
            ("streamrnn.offset", str(rec.offset).encode()),
        ]
        self._send(_Outgoing(self.dead_letter_topic, rec.key, rec.value if rec.value is not None else b"", headers,
                             "dead_letter"))
        self.metrics.dead_letters.labels(reason=reason.value).inc()

    def alert(self, ev: AlertEvent, partition: int) -> None:
        """Publish one alert event (topic, sinks, log); ``partition`` is its reading's partition."""
        self._send(_Outgoing(self.alerts_topic, ev.sensor_id.encode(), orjson.dumps(ev.to_dict()), None, "alert"))
        self.metrics.alert_events.labels(event=ev.event.value, kind=ev.kind.value).inc()
        if ev.evidence is not None and ev.event is Transition.OPEN:
            self.metrics.alerts_by_evidence.labels(evidence=ev.evidence).inc()
        for sink in self.sinks:
            sink.submit(ev)
        if self.log_alerts:
            alert_log.warning("alert %s %s sensor=%s ts=%.3f value=%.6g forecast=%.6g score=%.6f model=%s", ev.kind.value,
                              ev.event.value, ev.sensor_id, ev.ts, ev.value, ev.forecast, ev.anomaly_score, ev.model_version,
                              extra={"sensor_id": ev.sensor_id, "partition": partition, "model_version": ev.model_version,
                                     "event": ev.event.value, "kind": ev.kind.value})

    def scores(self, sensor_ids: Sequence[str], *, ts: np.ndarray, value: np.ndarray, forecast: np.ndarray,
               lower: np.ndarray, upper: np.ndarray, anomaly_score: np.ndarray, surprise: np.ndarray, model_version: str,
               tags: Sequence[Mapping[str, str]] | None) -> int:
        """Publish one record per reading to the scores topic (NaN becomes null; ``tags``
        per reading, ``{}`` for all when None); returns how many."""
        if self.scores_topic is None or not len(sensor_ids):
            return 0
        # nine significant digits: what a float32 network's forecast means, in half the bytes
        fc, lo, up, sc, su = (round_significant(x).tolist() for x in (forecast, lower, upper, anomaly_score, surprise))
        tag_list: Sequence[Mapping[str, str]] = tags if tags is not None else [{}] * len(sensor_ids)
        dumps = orjson.dumps
        mv = model_version
        records = [(sid.encode(), dumps({"sensor_id": sid, "ts": t, "value": v, "forecast": f, "lower": lw, "upper": u,
                                         "anomaly_score": a, "surprise": x, "model_version": mv, "tags": tg}))
                   for sid, t, v, f, lw, u, a, x, tg in zip(sensor_ids, ts.tolist(), value.tolist(), fc, lo, up, sc, su,
                                                             tag_list, strict=True)]
        self.transport.produce_many(self.scores_topic, records, on_error=self._score_refused)
        self.metrics.scores_published.inc(len(records))
        return len(records)

    def _score_refused(self, key: bytes, value: bytes, exc: Exception) -> None:
        self._refused_now(_Outgoing(self.scores_topic or "", key, value, None, "score"), exc)

    def alerts_position(self) -> dict[int, int]:
        """Per alerts-topic partition, the offset after the last acknowledged alert."""
        with self._lock:
            return dict(self._alerts_next)

    def _alert_acked(self, d: Delivery) -> None:
        # runs on the producer's I/O thread
        with self._lock:
            if d.offset + 1 > self._alerts_next.get(d.partition, 0):
                self._alerts_next[d.partition] = d.offset + 1

    def refused(self) -> int:
        """How many records the broker refused and have not been sent again."""
        with self._lock:
            return len(self._refused)

    def redeliver(self) -> int:
        """Send every refused record again (their reports come as for the first try);
        returns how many."""
        with self._lock:
            again, self._refused = self._refused, []
        for out in again:
            self._send(out)
        return len(again)

    def _send(self, out: _Outgoing) -> None:
        def on_refused(exc: Exception) -> None:  # on the producer's I/O thread
            self._refused_now(out, exc)
        self.transport.produce(out.topic, out.key, out.value, out.headers, on_error=on_refused,
                               on_success=self._alert_acked if out.kind == "alert" else None)

    def _refused_now(self, out: _Outgoing, exc: Exception) -> None:
        """Keep a refused record to send again (on the producer's I/O thread)."""
        self.metrics.produce_errors.labels(topic_kind=out.kind).inc()
        log.error("failed to deliver %s record (kept to send again): %s", out.kind, exc)
        with self._lock:
            self._refused.append(out)
