"""Everything the worker sends out about readings: alert events and dead letters.

An alert event goes to the alerts topic (the durable record, keyed by sensor id), to
every configured sink (best effort) and to the log. A rejected message goes to the
dead-letter topic with its original key and bytes and the reason in headers (Kafka
Connect's convention). Delivery reports come back on the producer's thread: the
publisher keeps how far each alerts-topic partition has been acknowledged (saved with
the state, for de-duplication after a replay) and counts what failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import orjson

from ..core import AlertEvent
from ..ingest.messages import Reason
from .metrics import WorkerMetrics
from .sinks import AlertSink
from .transport.base import Delivery, Record, Transport

__all__ = ["Publisher"]

log = logging.getLogger(__name__)
alert_log = logging.getLogger("streamrnn.alerts")


class Publisher:
    """Publishes alert events and dead letters through one transport."""

    def __init__(self, transport: Transport, *, alerts_topic: str, dead_letter_topic: str, sinks: list[AlertSink],
                 metrics: WorkerMetrics, log_alerts: bool) -> None:
        self.transport = transport
        self.alerts_topic = alerts_topic
        self.dead_letter_topic = dead_letter_topic
        self.sinks = sinks
        self.metrics = metrics
        self.log_alerts = log_alerts
        self._alerts_next: dict[int, int] = {}
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
        self.transport.produce(self.dead_letter_topic, rec.key, rec.value if rec.value is not None else b"", headers,
                               on_error=self._failed("dead_letter"))
        self.metrics.dead_letters.labels(reason=reason.value).inc()

    def alert(self, ev: AlertEvent, partition: int) -> None:
        """Publish one alert event (topic, sinks, log); ``partition`` is its reading's partition."""
        self.transport.produce(self.alerts_topic, ev.sensor_id.encode(), orjson.dumps(ev.to_dict()),
                               on_error=self._failed("alert"), on_success=self._alert_acked)
        self.metrics.alert_events.labels(event=ev.event.value).inc()
        for sink in self.sinks:
            sink.submit(ev)
        if self.log_alerts:
            alert_log.warning("alert %s sensor=%s ts=%.3f value=%.6g forecast=%.6g score=%.6f model=%s", ev.event.value,
                              ev.sensor_id, ev.ts, ev.value, ev.forecast, ev.anomaly_score, ev.model_version,
                              extra={"sensor_id": ev.sensor_id, "partition": partition, "model_version": ev.model_version,
                                     "event": ev.event.value})

    def alerts_position(self) -> dict[int, int]:
        """Per alerts-topic partition, the offset after the last acknowledged alert."""
        with self._lock:
            return dict(self._alerts_next)

    def _alert_acked(self, d: Delivery) -> None:
        # runs on the producer's I/O thread
        with self._lock:
            if d.offset + 1 > self._alerts_next.get(d.partition, 0):
                self._alerts_next[d.partition] = d.offset + 1

    def _failed(self, kind: str) -> Callable[[Exception], None]:
        def errback(exc: Exception) -> None:
            self.metrics.produce_errors.labels(topic_kind=kind).inc()
            log.error("failed to deliver %s record: %s", kind, exc)
        return errback
