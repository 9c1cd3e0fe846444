"""Alert routing beside the alerts topic: Alertmanager and generic JSON webhooks.

Each sink has a bounded queue and its own sender thread. Submitting never blocks the
scoring loop: when the queue is full the event is dropped and counted. Sends are
retried with exponential backoff and jitter; an event that still fails is dropped and
counted. The Kafka alerts topic stays the durable record (it is flushed before each
checkpoint); these sinks are best-effort notification paths.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ..config import AlertsConfig, SinkConfig
from ..core import AlertEvent, AlertKind, Transition
from .metrics import WorkerMetrics

__all__ = ["AlertSink", "AlertmanagerSink", "WebhookSink", "build_sinks", "severity_for"]

log = logging.getLogger(__name__)


def severity_for(score: float, bands: dict[str, float]) -> str:
    """The band with the highest minimum score that ``score`` reaches; ``info`` below all."""
    best, best_min = "info", -1.0
    for name, minimum in bands.items():
        if score >= minimum and minimum > best_min:
            best, best_min = name, minimum
    return best


def event_severity(event: AlertEvent, alerts: AlertsConfig) -> tuple[str, float]:
    """Severity of an alert event and the score behind it (a resolve keeps its peak's;
    a no_data alert has no score and the configured severity)."""
    if event.kind is AlertKind.NO_DATA:
        return alerts.no_data_severity, float("nan")
    score = event.peak_score if event.event is Transition.RESOLVED else event.anomaly_score
    return severity_for(score, alerts.severity_bands), score


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class _SendError(Exception):
    """A failure worth retrying (connection refused, timeout, 5xx, 429)."""


class _Rejected(Exception):
    """The receiver refused the payload (4xx): retrying will not help."""


class AlertSink:
    """A bounded queue drained by one thread that POSTs JSON with retries."""

    def __init__(self, cfg: SinkConfig, metrics: WorkerMetrics, alerts: AlertsConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name or cfg.type
        self.metrics = metrics
        self.alerts = alerts
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=cfg.max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    # -- called from the scoring loop -------------------------------------------
    def submit(self, event: AlertEvent) -> None:
        """Queue an event; drops (and counts) it when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(self.payload(event))
        except queue.Full:
            self.metrics.sink_dropped.labels(sink=self.name, reason="queue_full").inc()
        self.metrics.sink_queue.labels(sink=self.name).set(self._queue.qsize())

    def payload(self, event: AlertEvent) -> Any:
        """The JSON body for one event."""
        d = event.to_dict()
        d["severity"], _ = event_severity(event, self.alerts)
        return d

    # -- the sender thread ----------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            try:
                body = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.idle()
                continue
            self.metrics.sink_queue.labels(sink=self.name).set(self._queue.qsize())
            self.deliver(body)

    def idle(self) -> None:
        """Called when the queue is empty (periodic work of subclasses)."""

    def deliver(self, body: Any) -> bool:
        """POST with retries; counts the outcome. True when delivered."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.cfg.max_retries + 1),
                                    wait=wait_exponential_jitter(self.cfg.backoff_initial_seconds, self.cfg.backoff_max_seconds),
                                    retry=retry_if_exception_type(_SendError), sleep=self._sleep, reraise=False):
                with attempt:
                    self._post(body)
        except RetryError as e:
            self.metrics.sink_dropped.labels(sink=self.name, reason="send_failed").inc()
            log.warning("alert sink %s: giving up after %d attempts: %s", self.name, self.cfg.max_retries + 1,
                        e.last_attempt.exception())
            return False
        except _Rejected as e:
            self.metrics.sink_dropped.labels(sink=self.name, reason="rejected").inc()
            log.error("alert sink %s: receiver rejected the alert: %s", self.name, e)
            return False
        self.metrics.sink_sent.labels(sink=self.name).inc()
        return True

    def _sleep(self, seconds: float) -> None:
        # On shutdown the remaining retries run without waiting, so close() is bounded.
        self._stop.wait(seconds)

    def _post(self, body: Any) -> None:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url(), data=data, method="POST",
                                     headers={"Content-Type": "application/json", **{k: v.get_secret_value() for k, v in self.cfg.headers.items()}})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_seconds) as r:
                r.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                raise _SendError(f"HTTP {e.code}") from None
            raise _Rejected(f"HTTP {e.code}: {e.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise _SendError(str(e)) from None

    def url(self) -> str:
        """Where to POST."""
        return self.cfg.url

    def close(self, timeout: float = 5.0) -> None:
        """Stop after draining what is queued, waiting at most ``timeout`` seconds."""
        self._stop.set()
        self._thread.join(timeout)


class WebhookSink(AlertSink):
    """POSTs each alert event as the JSON object of the alerts topic, plus ``severity``."""


class AlertmanagerSink(AlertSink):
    """Alertmanager's v2 API: ``POST /api/v2/alerts``.

    Labels: the sensor's tags (names sanitised to label-name rules, see
    :func:`tag_labels`), then ``alertname``, ``sensor_id``, ``kind``, ``severity``
    (a tag never replaces these) and the configured static labels; alertname is
    ``alertname`` for anomalies and ``no_data_alertname`` for silent sensors.
    Annotations carry value, forecast, residual, score, the evidence and model version
    (a no_data alert: value and model version). An open alert is re-sent every
    ``resend_interval_seconds`` (Alertmanager resolves alerts it stops hearing about);
    a resolve is sent with ``endsAt`` and the labels the alert opened with (Alertmanager
    knows an alert by its labels, and a tag may have changed since).
    """

    def __init__(self, cfg: SinkConfig, metrics: WorkerMetrics, alerts: AlertsConfig) -> None:
        self._active: dict[tuple[str, AlertKind], dict[str, Any]] = {}
        self._active_lock = threading.Lock()
        self._last_resend = time.monotonic()
        super().__init__(cfg, metrics, alerts)

    def url(self) -> str:
        return self.cfg.url.rstrip("/") + "/api/v2/alerts"

    def payload(self, event: AlertEvent) -> Any:
        severity, score = event_severity(event, self.alerts)
        no_data = event.kind is AlertKind.NO_DATA
        annotations = {
            "summary": (f"{event.sensor_id}: no reading since {_rfc3339(event.opened_ts)}" if no_data else
                        f"{event.sensor_id}: value {event.value:.6g} against forecast {event.forecast:.6g}"),
            "value": f"{event.value:.6g}", "model_version": event.model_version,
        }
        if not no_data:
            annotations |= {"forecast": f"{event.forecast:.6g}", "residual": f"{event.residual:.6g}",
                            "anomaly_score": f"{score:.6f}", "threshold": f"{event.threshold:.6f}"}
            if event.evidence is not None:
                annotations["evidence"] = f"{event.evidence} (p={event.evidence_p:.3g})"
        alert: dict[str, Any] = {
            "labels": {**tag_labels(event.tags), "alertname": self.cfg.no_data_alertname if no_data else self.cfg.alertname,
                       "sensor_id": event.sensor_id, "kind": event.kind.value, "severity": severity, **self.cfg.labels},
            "annotations": annotations,
            "startsAt": _rfc3339(event.opened_ts),
        }
        if self.cfg.generator_url:
            alert["generatorURL"] = self.cfg.generator_url
        with self._active_lock:
            if event.event is Transition.RESOLVED:
                alert["endsAt"] = _rfc3339(min(event.ts, time.time()))
                opened = self._active.pop((event.sensor_id, event.kind), None)
                if opened is not None:
                    alert["labels"] = opened["labels"]
            else:
                self._active[(event.sensor_id, event.kind)] = alert
        return [alert]

    def idle(self) -> None:
        if time.monotonic() - self._last_resend < self.cfg.resend_interval_seconds:
            return
        self._last_resend = time.monotonic()
        with self._active_lock:
            active = list(self._active.values())
        if active:
            self.deliver(active)


_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")


def tag_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as Alertmanager labels: characters outside ``[A-Za-z0-9_]`` become ``_``, a
    name starting with a digit gets a leading ``_``, and one starting with ``__``
    (reserved for Prometheus' own) is prefixed with ``tag``."""
    out = {}
    for name, value in tags.items():
        label = _LABEL_CHARS.sub("_", name)
        if not label or label[0].isdigit():
            label = "_" + label
        if label.startswith("__"):
            label = "tag" + label
        out[label] = value
    return out


def build_sinks(alerts: AlertsConfig, metrics: WorkerMetrics) -> list[AlertSink]:
    """Start the sinks of ``alerts.sinks``."""
    kinds = {"alertmanager": AlertmanagerSink, "webhook": WebhookSink}
    return [kinds[c.type](c, metrics, alerts) for c in alerts.sinks]
