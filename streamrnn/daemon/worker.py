"""The Kafka worker: poll, decode, score, publish, checkpoint, commit; until asked to stop.

The pieces live beside this module: :mod:`.connection` (reaching the broker),
:mod:`.publisher` (alerts and dead letters out), :mod:`.checkpoint` (the durability
rule, restore and revoke), :mod:`streamrnn.lifecycle.serving` (model swaps and
retraining). This module wires them and runs the loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import numpy as np
import torch

from ..config import Config
from ..core import Detector, ScoreResult
from ..ingest.messages import MessageDecoder, Reason
from ..lifecycle.registry import ModelRegistry
from ..lifecycle.retraining import Retrainer
from ..lifecycle.serving import ModelService, serving_detector
from .checkpoint import CheckpointCoordinator, CheckpointOutcome
from .connection import BrokerLink
from .http import MetricsServer
from .metrics import WorkerMetrics
from .publisher import Publisher
from .sinks import AlertSink, build_sinks
from .stores.base import StateStore
from .stores.changelog import ChangelogStateStore
from .stores.local import LocalStateStore
from .transport.base import Batch, Partition, Transport
from .transport.clients import open_transport

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    """Runs the detector over the configured Kafka topics until asked to stop."""

    def __init__(self, cfg: Config, detector: Detector | None = None, metrics: WorkerMetrics | None = None) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.model.threads)
        registry = ModelRegistry.in_state_dir(cfg.state.dir, keep=cfg.training.registry_keep)
        self.detector = detector or serving_detector(registry, cfg.model.path, scoring=cfg.scoring, alerts=cfg.alerts,
                                                     bank=cfg.state)
        self.detector.warm_up()
        self.decoder = MessageDecoder(cfg.message)
        if cfg.kafka.scores_topic and cfg.kafka.client == "kafka-python":
            log.warning("kafka.scores_topic with kafka.client kafka-python: its producer spends tens of microseconds "
                        "per record in Python, a multiple of scoring itself; confluent-kafka keeps the worker's pace "
                        "(see README, Scores stream)")
        self.metrics = metrics or WorkerMetrics()
        self._stop = threading.Event()
        self.link = BrokerLink(cfg.kafka, stop=self._stop, metrics=self.metrics)
        retrainer = (Retrainer(cfg.training, registry, self.metrics)
                     if cfg.training.enabled and cfg.state.history_length else None)
        self.models = ModelService(self.detector, registry, retrainer, poll_seconds=cfg.training.registry_poll_seconds,
                                   observer=self.metrics)
        self.transport: Transport | None = None
        self.store: StateStore | None = None
        self.checkpoints: CheckpointCoordinator | None = None
        self.publisher: Publisher | None = None
        self.server: MetricsServer | None = None
        self.sinks: list[AlertSink] = []
        self._assigned: set[Partition] = set()
        self._lag_labels: set[Partition] = set()
        self._evicted_seen = 0
        self._resets_seen = 0
        self._scored_total = 0
        self._last_top = 0.0

    # -- lifecycle --------------------------------------------------------------
    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Finish the current batch, checkpoint, commit and return from :meth:`run`."""
        if signum is not None:
            log.info("signal %s received: finishing the batch and stopping", signal.Signals(signum).name)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code (0 on a clean stop)."""
        self.sinks = build_sinks(self.cfg.alerts, self.metrics)
        if self.cfg.metrics.enabled:
            self.server = MetricsServer(self.metrics, self.readiness, host=self.cfg.metrics.host, port=self.cfg.metrics.port).start()
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.server.port)
        try:
            if not self._connect():
                return 0  # stopped while the broker was still unreachable
            log.info("consuming %s as group %s", ",".join(self.cfg.kafka.topics), self.cfg.kafka.group_id)
            assert self.transport is not None and self.checkpoints is not None
            while not self._stop.is_set():
                batch = self.link.poll(self.transport)
                if batch is None:
                    break
                if len(batch):
                    self.handle_batch(batch)
                self._observe()
                self.models.tick(self._scored_total)
                self._report(self.checkpoints.tick())
            if not self._checkpoint():
                # what was scored since the last good checkpoint is replayed by the next
                # start; say so to whoever supervises the process
                log.error("final checkpoint failed (%s): offsets since the last one are not committed",
                          self.checkpoints.pending)
                return 1
            return 0
        finally:
            self._close()

    def _connect(self) -> bool:
        """Connect the transport and open the state store (the changelog needs the broker)."""
        def factory() -> Transport:
            transport = open_transport(self.cfg.kafka, on_assign=self._on_assign, on_revoke=self._on_revoke)
            if self.store is None:
                try:
                    self.store = self._open_store(transport)
                except Exception:
                    transport.close()
                    raise
            return transport

        transport = self.link.connect(factory)
        if transport is None:
            return False
        self.transport = transport
        self.publisher = Publisher(transport, alerts_topic=self.cfg.kafka.alerts_topic,
                                   dead_letter_topic=self.cfg.kafka.dead_letter_topic, sinks=self.sinks, metrics=self.metrics,
                                   log_alerts=self.cfg.alerts.log, scores_topic=self.cfg.kafka.scores_topic)
        assert self.store is not None
        self.checkpoints = CheckpointCoordinator(
            detector=self.detector, store=self.store, transport=transport, alerts_topic=self.cfg.kafka.alerts_topic,
            outbox=self.publisher, interval_seconds=self.cfg.state.checkpoint_interval_seconds,
            metrics=self.metrics)
        return True

    def _checkpoint(self) -> CheckpointOutcome:
        assert self.checkpoints is not None
        outcome = self.checkpoints.checkpoint()
        self._report(outcome)
        return outcome

    def _report(self, outcome: CheckpointOutcome | None) -> None:
        """Tell the link a checkpoint that just ended found the broker not answering."""
        assert self.checkpoints is not None
        if outcome is CheckpointOutcome.FLUSH_FAILED or (outcome is not None and self.checkpoints.commit_failing):
            self.link.report(False)

    def _open_store(self, transport: Transport) -> StateStore:
        st = self.cfg.state
        if st.backend == "local":
            return LocalStateStore(st.dir, row_dtype=self.detector.bank.row_dtype)
        parts = st.changelog_partitions or max(transport.partition_count(t) for t in self.cfg.kafka.topics)
        topic = st.changelog_topic or f"{self.cfg.kafka.group_id}-state-changelog"
        return ChangelogStateStore(self.cfg.kafka, topic=topic, row_dtype=self.detector.bank.row_dtype, partitions=parts,
                                   cache_dir=st.dir)

    def _close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()  # a save under way finishes before its store closes
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception as e:  # closing must not turn a clean stop into a crash
                log.warning("closing Kafka clients: %s", e)
        self.models.close()
        if self.store is not None:
            self.store.close()
        for sink in self.sinks:
            sink.close()
        if self.server is not None:
            self.server.stop()
        log.info("stopped")

    # -- the batch ----------------------------------------------------------------
    def handle_batch(self, batch: Batch) -> None:
        """Decode, score and alert one poll batch; its offsets wait for the next checkpoint."""
        assert self.publisher is not None and self.checkpoints is not None
        t0 = time.perf_counter()
        for (topic, _), count in batch.counts().items():
            self.metrics.messages_consumed.labels(topic=topic).inc(count)
        decoded = self.decoder.decode(batch.values, now=time.time())
        for rej in decoded.rejections:
            self.publisher.dead_letter(batch.record(rej.index), rej.reason, rej.detail)
        for reason, count in decoded.bad_fields.items():
            self.metrics.fields_rejected.labels(reason=reason.value).inc(count)

        owner = batch.partition_index({tp: self.checkpoints.owner(tp) for tp in self._assigned})
        index = np.asarray(decoded.index, dtype=np.int64)
        res = self.detector.process(decoded.sensor_ids, decoded.ts, decoded.values, owner[index], tags=decoded.tags)
        stale = np.flatnonzero(~res.accepted)
        if len(stale):
            if self.cfg.message.out_of_order == "dead_letter":
                # a wide message's readings are stale together: one dead letter per message
                for i in np.unique(index[stale]).tolist():
                    self.publisher.dead_letter(batch.record(i), Reason.OUT_OF_ORDER,
                                               "timestamp at or before the sensor's last reading")
            else:
                self.metrics.readings_dropped.labels(reason=Reason.OUT_OF_ORDER.value).inc(len(stale))
        if self.publisher.scores_topic is not None:
            self._publish_scores(decoded.sensor_ids, decoded.ts, decoded.values, res)
        for ev, mark in zip(res.events, res.event_owner, strict=True):
            if not self.checkpoints.replayed(ev):
                tp = self.checkpoints.partition_of(mark)
                self.publisher.alert(ev, -1 if tp is None else tp[1])
        self.checkpoints.track(batch.next_offsets)

        m = self.metrics
        m.readings_scored.inc(res.n_scored)
        self._scored_total += res.n_scored
        m.batch_seconds.observe(time.perf_counter() - t0)
        m.batch_size.observe(len(batch))
        m.active_sensors.set(self.detector.active_sensors)
        evicted = self.detector.bank.evicted_total
        if evicted > self._evicted_seen:
            m.sensors_evicted.inc(evicted - self._evicted_seen)
            self._evicted_seen = evicted
        resets = self.detector.resets_total
        if resets > self._resets_seen:
            m.sensor_resets.labels(reason="non_finite_state").inc(resets - self._resets_seen)
            self._resets_seen = resets

    def _publish_scores(self, sensor_ids: list[str], ts: list[float], values: list[float], res: ScoreResult) -> None:
        """One scores-topic record per scored reading (the batch's columns, filtered once)."""
        assert self.publisher is not None
        ok = np.flatnonzero(res.accepted)
        lower, upper = res.band()
        ids = [sensor_ids[i] for i in ok.tolist()]
        tags = None
        if res.tag_keys is not None:
            tags_of = self.detector.tags.tags
            tags = [tags_of(k) for k in res.tag_keys[ok].tolist()]
        self.publisher.scores(ids, ts=np.asarray(ts)[ok], value=np.asarray(values)[ok], forecast=res.forecast[ok],
                              lower=lower[ok], upper=upper[ok], anomaly_score=res.score[ok], surprise=res.surprise[ok],
                              model_version=self.detector.model_version, tags=tags)

    # -- rebalances -----------------------------------------------------------------
    def _on_assign(self, partitions: list[Partition]) -> None:
        log.info("partitions assigned: %s", partitions)
        new = [tp for tp in partitions if tp not in self._assigned]
        self._assigned = set(partitions)
        self.metrics.assigned_partitions.set(len(partitions))
        for tp in self._lag_labels - set(partitions):
            self.metrics.consumer_lag.remove(tp[0], str(tp[1]))
        self._lag_labels &= set(partitions)
        if new:
            # rebalances happen inside poll, which starts once the coordinator exists
            assert self.checkpoints is not None
            self.checkpoints.assigned(new)

    def _on_revoke(self, partitions: list[Partition]) -> None:
        log.info("partitions revoked: %s", partitions)
        assert self.checkpoints is not None
        self.checkpoints.revoked(partitions)
        self._assigned -= set(partitions)

    # -- observation ------------------------------------------------------------------
    def _observe(self) -> None:
        assert self.transport is not None
        m = self.cfg.metrics
        if m.top_sensors and time.monotonic() - self._last_top >= m.top_sensors_interval_seconds:
            self.metrics.set_top_sensors(self.detector.top_sensors(m.top_sensors))
            self._last_top = time.monotonic()
        for (topic, part), lag in self.transport.lag().items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)
            self._lag_labels.add((topic, part))
        self.link.report(self.transport.broker_reachable())

    def readiness(self) -> dict[str, bool]:
        """The checks behind /readyz."""
        return {
            "partitions_assigned": bool(self._assigned),
            "broker_reachable": self.link.up,
            "state_saved": self.checkpoints is not None and not self.checkpoints.failing,
            "model_loaded": self.detector.model_ok,
        }
