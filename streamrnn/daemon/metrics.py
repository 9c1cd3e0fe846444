"""Prometheus metrics of the worker.

Names follow Prometheus conventions: a ``streamrnn_`` prefix, ``_total`` counters,
``_seconds`` durations in base units. Label sets are bounded: topics, partitions,
reasons and event kinds, never one label per sensor. :class:`WorkerMetrics` is also
the model lifecycle's observer (:class:`~streamrnn.lifecycle.serving.LifecycleObserver`),
so retraining reports here without importing a metrics library.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..lifecycle.retraining import RetrainResult

__all__ = ["WorkerMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WorkerMetrics:
    """Every metric the worker exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.messages_consumed = Counter("streamrnn_messages_consumed", "Kafka messages consumed.", ["topic"], registry=r)
        self.readings_scored = Counter("streamrnn_readings_scored", "Readings scored by the detector.", registry=r)
        self.readings_dropped = Counter("streamrnn_readings_dropped", "Readings dropped without scoring (counted, not dead-lettered).", ["reason"], registry=r)
        self.alert_events = Counter("streamrnn_alert_events", "Alert events emitted, by event (open, resolved) and kind (anomaly, no_data).", ["event", "kind"], registry=r)
        self.scores_published = Counter("streamrnn_scores_published", "Records produced to the scores topic (one per scored reading).", registry=r)
        self.alerts_by_evidence = Counter("streamrnn_anomaly_alerts_opened_by_evidence", "Anomaly alerts opened, by the evidence that was strongest (residual, run, range, time_of_day, pattern, stuck).", ["evidence"], registry=r)
        self.fields_rejected = Counter("streamrnn_message_fields_rejected", "Value fields of wide messages that gave no reading (missing_field, non_numeric_value, non_finite_value) and tag values left out (bad_tag), by reason.", ["reason"], registry=r)
        self.dead_letters = Counter("streamrnn_dead_letters", "Messages sent to the dead-letter topic.", ["reason"], registry=r)
        self.consumer_lag = Gauge("streamrnn_consumer_lag", "Messages behind the partition high watermark.", ["topic", "partition"], registry=r)
        self.batch_seconds = Histogram("streamrnn_scoring_batch_duration_seconds", "Time to score one poll batch.", buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("streamrnn_scoring_batch_readings", "Readings in one scored batch.", buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000), registry=r)
        self.active_sensors = Gauge("streamrnn_active_sensors", "Sensors held in the state bank.", registry=r)
        self.sensor_resets = Counter("streamrnn_sensor_resets", "Sensors whose state was started afresh, by reason (non_finite_state: values near the float range overflowed it).", ["reason"], registry=r)
        self.sensors_evicted = Counter("streamrnn_sensors_evicted", "Sensors evicted from the state bank (least recently seen beyond max_sensors).", registry=r)
        self.model_info = Gauge("streamrnn_model_info", "Serving model version (value 1).", ["version"], registry=r)
        self.checkpoint_seconds = Histogram("streamrnn_checkpoint_duration_seconds", "Time to write a state checkpoint.", buckets=_LATENCY_BUCKETS, registry=r)
        self.checkpoint_bytes = Gauge("streamrnn_checkpoint_size_bytes", "Size of the last state checkpoint.", registry=r)
        self.last_checkpoint = Gauge("streamrnn_last_checkpoint_timestamp_seconds", "Unix time of the last successful checkpoint.", registry=r)
        self.checkpoints = Counter("streamrnn_checkpoints", "Checkpoints by result (saved, nothing_new, flush_failed, save_failed).", ["result"], registry=r)
        self.checkpoint_failing = Gauge("streamrnn_checkpoint_failing", "1 while checkpoints fail (records unacknowledged or the state store not writable: offsets stay uncommitted), else 0.", registry=r)
        self.state_corrupt = Counter("streamrnn_state_corrupt", "Saved partition states or changelog records found unusable on restore (their sensors started fresh).", registry=r)
        self.offset_commits = Counter("streamrnn_offset_commits", "Offset commits by result.", ["result"], registry=r)
        self.broker_up = Gauge("streamrnn_broker_up", "1 when the broker answered the last request, else 0.", registry=r)
        self.broker_retries = Counter("streamrnn_broker_connection_retries", "Attempts to reach an unreachable broker.", registry=r)
        self.assigned_partitions = Gauge("streamrnn_assigned_partitions", "Partitions assigned to this worker.", registry=r)
        self.produce_errors = Counter("streamrnn_produce_errors", "Alert, score or dead-letter records the producer failed to deliver (each kept and sent again).", ["topic_kind"], registry=r)
        self.sink_sent = Counter("streamrnn_alert_sink_sent", "Alert notifications delivered by a sink.", ["sink"], registry=r)
        self.sink_dropped = Counter("streamrnn_alert_sink_dropped", "Alert notifications a sink dropped (queue full, send failed, rejected).", ["sink", "reason"], registry=r)
        self.sink_queue = Gauge("streamrnn_alert_sink_queue_length", "Alert notifications waiting in a sink's queue.", ["sink"], registry=r)
        self.retrain_runs = Counter("streamrnn_retrain_runs", "Retraining runs by result (promoted, rejected, failed).", ["result"], registry=r)
        for result in (RetrainResult.PROMOTED, RetrainResult.REJECTED, RetrainResult.FAILED):
            self.retrain_runs.labels(result=result.value)
        self.retrain_seconds = Histogram("streamrnn_retrain_duration_seconds", "Duration of a retraining run.", buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.retrain_in_progress = Gauge("streamrnn_retrain_in_progress", "1 while a retraining run is at work.", registry=r)
        self.last_retrain_success = Gauge("streamrnn_last_successful_retrain_timestamp_seconds", "Unix time the serving model was made: its promotion, or when this state directory first served the packaged or configured model (kept across restarts).", registry=r)
        self.model_swaps = Counter("streamrnn_model_swaps", "Hot swaps of the serving model.", registry=r)
        self.restore_seconds = Histogram("streamrnn_state_restore_duration_seconds", "Time to restore the state of newly assigned partitions.", buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.alerts_deduplicated = Counter("streamrnn_alerts_deduplicated", "Alert events recomputed from a replay and not published again.", registry=r)
        self.start_time = Gauge("streamrnn_start_time_seconds", "Unix time the worker started.", registry=r)
        self.start_time.set_to_current_time()
        self.top_sensor_score = Gauge("streamrnn_top_sensor_anomaly_score", "Latest surprise (the score alerts follow) of the most anomalous sensors (at most metrics.top_sensors series).", ["sensor_id"], registry=r)
        self._top_sensors: set[str] = set()
        self._model_version: str | None = None
        # the reasons a field can be left out for exist from the start, at 0, so a
        # dashboard's rate shows 0 rather than no data
        for reason in ("missing_field", "non_numeric_value", "non_finite_value", "bad_tag"):
            self.fields_rejected.labels(reason=reason)
        for kind in ("alert", "score", "dead_letter"):
            self.produce_errors.labels(topic_kind=kind)

    def set_model_version(self, version: str) -> None:
        """Expose the serving model version as the only ``streamrnn_model_info`` series."""
        if self._model_version is not None:
            self.model_info.remove(self._model_version)
        self.model_info.labels(version=version).set(1)
        self._model_version = version

    # -- the model lifecycle's observer ---------------------------------------------
    def retrain_started(self) -> None:
        """A retraining run began."""
        self.retrain_in_progress.set(1)

    def retrain_finished(self, result: RetrainResult, seconds: float) -> None:
        """A retraining run ended; cancelled runs (shutdown) are not counted."""
        if result is not RetrainResult.CANCELLED:
            self.retrain_runs.labels(result=result.value).inc()
            self.retrain_seconds.observe(seconds)
        self.retrain_in_progress.set(0)

    def model_promoted(self, at: float) -> None:
        """The serving model was promoted (or made) at Unix time ``at``."""
        self.last_retrain_success.set(at)

    def model_serving(self, version: str, *, swapped: bool) -> None:
        """The detector serves ``version``; count the swap if it replaced another."""
        self.set_model_version(version)
        if swapped:
            self.model_swaps.inc()

    def set_top_sensors(self, top: list[tuple[str, float]]) -> None:
        """Replace the per-sensor series with the current top list (bounded label set)."""
        keep = {sid for sid, _ in top}
        for sid in self._top_sensors - keep:
            self.top_sensor_score.remove(sid)
        for sid, score in top:
            self.top_sensor_score.labels(sensor_id=sid).set(score)
        self._top_sensors = keep
