"""The Kafka worker: poll, decode, score, alert, checkpoint, then commit.

Order of durability at every checkpoint: alerts and dead letters are acknowledged by
the broker, then the state of each partition with new readings is saved, and only
then are its offsets committed. A crash at any point therefore replays readings into
a state that has not seen them (or drops them as already seen); alerts recomputed
from a replay are recognised from the alerts topic and not published twice. State
belongs to partitions: restored on assignment, saved on revocation.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import numpy as np
import orjson
import torch
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_any, wait_exponential_jitter

from .checkpoint import ChangelogStateStore, CheckpointError, LocalStateStore, PartitionState, StateStore
from .config import Config
from .core import AlertEvent, Detector, default_model_path, load_model
from .messages import MessageDecoder, Reason
from .metrics import MetricsServer, WorkerMetrics
from .registry import ModelRegistry
from .retraining import Retrainer
from .sinks import AlertSink, build_sinks
from .transport import Batch, KafkaError, KafkaTransport, Partition, Record

__all__ = ["Worker", "load_detector"]

log = logging.getLogger(__name__)
alert_log = logging.getLogger("streamrnn.alerts")

_FLUSH_TIMEOUT_S = 10.0


def registry_for(cfg: Config) -> ModelRegistry:
    """The model registry in the state directory."""
    return ModelRegistry(Path(cfg.state.dir) / "models", keep=cfg.training.registry_keep)


def load_detector(cfg: Config, use_registry: bool = False) -> Detector:
    """The detector serving the registry's current version (when asked and present),
    else the configured model file, else the packaged default."""
    mf = registry_for(cfg).load_serving() if use_registry else None
    if mf is not None:
        log.info("serving registry model %s (sha256 %s)", mf.version, mf.sha256[:12])
    else:
        path = Path(cfg.model.path) if cfg.model.path else default_model_path()
        mf = load_model(path)
        log.info("loaded model %s from %s (sha256 %s)", mf.version, path, mf.sha256[:12])
    return Detector.from_config(cfg, mf.model, mf.version)


class Worker:
    """Runs the detector over the configured Kafka topics until asked to stop."""

    def __init__(self, cfg: Config, detector: Detector | None = None, metrics: WorkerMetrics | None = None) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.model.threads)
        self.detector = detector or load_detector(cfg, use_registry=True)
        self.registry = registry_for(cfg)
        self.decoder = MessageDecoder(cfg.message.sensor_field, cfg.message.time_field, cfg.message.value_field)
        self.metrics = metrics or WorkerMetrics()
        self.metrics.set_model_version(self.detector.model_version)
        self.store: StateStore | None = None  # opened with the connection (the changelog needs the broker)
        self._part_ids: dict[Partition, int] = {}
        self._saved_tick = 0
        self._alerts_next: dict[int, int] = {}
        self._suppress: set[tuple[str, float, str]] = set()
        self.transport: KafkaTransport | None = None
        self.server: MetricsServer | None = None
        self._stop = threading.Event()
        self._pending: dict[Partition, int] = {}
        self._last_checkpoint = time.monotonic()
        self._evicted_seen = 0
        self._broker_up = False
        self._lag_labels: set[Partition] = set()
        self._assigned: set[Partition] = set()
        self.sinks: list[AlertSink] = []
        self._last_top = 0.0
        self.retrainer = Retrainer(cfg.training, self.registry, self.metrics) if cfg.training.enabled and cfg.state.history_length else None
        self._scored_total = 0
        self._last_registry_poll = time.monotonic()
        self.metrics.last_retrain_success.set(self._model_created())

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
        self.sinks = build_sinks(self.cfg.alerts.sinks, self.metrics, self.cfg.alerts.severity_bands)
        if self.cfg.metrics.enabled:
            self.server = MetricsServer(self.metrics, self.readiness, self.cfg.metrics.host, self.cfg.metrics.port).start()
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.server.port)
        try:
            self.transport = self._connect()
            if self.transport is None:
                return 0  # stopped while the broker was still unreachable
            self._set_broker_up(True)
            log.info("consuming %s as group %s", ",".join(self.cfg.kafka.topics), self.cfg.kafka.group_id)
            interval = self.cfg.state.checkpoint_interval_seconds
            backoff = self.cfg.kafka.reconnect_backoff_initial_seconds
            while not self._stop.is_set():
                try:
                    batch = self.transport.poll(self.cfg.kafka.poll_timeout_ms)
                except KafkaError as e:
                    # The client reconnects by itself; wait (interruptibly) and poll again.
                    self._set_broker_up(False)
                    log.warning("poll failed (%s); retrying in %.1fs", e, backoff)
                    self.metrics.broker_retries.inc()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.kafka.reconnect_backoff_max_seconds)
                    continue
                backoff = self.cfg.kafka.reconnect_backoff_initial_seconds
                if len(batch):
                    self.handle_batch(batch)
                self._observe()
                self._model_lifecycle()
                if self._pending and time.monotonic() - self._last_checkpoint >= interval:
                    self.checkpoint_and_commit()
            self.checkpoint_and_commit()
            return 0
        finally:
            if self.transport is not None:
                try:
                    self.transport.close()
                except Exception as e:  # closing must not turn a clean stop into a crash
                    log.warning("closing Kafka clients: %s", e)
            if self.retrainer is not None:
                self.retrainer.close()
            if self.store is not None:
                self.store.close()
            for sink in self.sinks:
                sink.close()
            if self.server is not None:
                self.server.stop()
            log.info("stopped")

    def _connect(self) -> KafkaTransport | None:
        k = self.cfg.kafka

        def before_sleep(state: RetryCallState) -> None:
            self.metrics.broker_retries.inc()
            self._set_broker_up(False)
            exc = state.outcome.exception() if state.outcome else None
            log.warning("broker %s unreachable (%s); retry %d in %.1fs", ",".join(k.bootstrap_servers), exc,
                        state.attempt_number, state.next_action.sleep if state.next_action else 0)

        @retry(retry=retry_if_exception_type((KafkaError, OSError)),
               wait=wait_exponential_jitter(initial=k.reconnect_backoff_initial_seconds, max=k.reconnect_backoff_max_seconds),
               stop=stop_any(lambda _s: self._stop.is_set()), before_sleep=before_sleep, sleep=self._stop.wait,
               reraise=True)
        def connect() -> KafkaTransport | None:
            if self._stop.is_set():
                return None
            transport = KafkaTransport(k, self._on_assign, self._on_revoke)
            if self.store is None:
                try:
                    self.store = self._open_store(transport)
                except Exception:
                    transport.close()
                    raise
            return transport

        try:
            return connect()
        except (KafkaError, OSError):
            return None  # only reached when a stop was requested during the retries

    def _open_store(self, transport: KafkaTransport) -> StateStore:
        st = self.cfg.state
        if st.backend == "local":
            return LocalStateStore(st.dir)
        parts = st.changelog_partitions or max(transport.partition_count(t) for t in self.cfg.kafka.topics)
        topic = st.changelog_topic or f"{self.cfg.kafka.group_id}-state-changelog"
        return ChangelogStateStore(self.cfg.kafka, topic, self.detector.bank.row_dtype, parts)

    # -- the batch ----------------------------------------------------------------
    def handle_batch(self, batch: Batch) -> None:
        """Decode, score and alert one poll batch; remember its offsets for the next commit."""
        t0 = time.perf_counter()
        records = batch.records
        for (topic, _), start, end in batch.spans:
            self.metrics.messages_consumed.labels(topic=topic).inc(end - start)
        decoded = self.decoder.decode([r.value for r in records])
        for rej in decoded.rejections:
            self._dead_letter(records[rej.index], rej.reason, rej.detail)

        owner = batch.partition_index({tp: self._part_index(tp) for tp in self._assigned})
        res = self.detector.process(decoded.sensor_ids, decoded.ts, decoded.values, owner[decoded.index])
        stale = np.flatnonzero(~res.accepted)
        if len(stale):
            if self.cfg.message.out_of_order == "dead_letter":
                for i in stale.tolist():
                    self._dead_letter(records[decoded.index[i]], Reason.OUT_OF_ORDER,
                                      "timestamp at or before the sensor's last reading")
            else:
                self.metrics.readings_dropped.labels(reason=Reason.OUT_OF_ORDER).inc(len(stale))
        for ev, i in zip(res.events, res.event_index):
            self._publish(ev, records[decoded.index[i]].partition)

        self._pending.update(batch.next_offsets())
        m = self.metrics
        m.readings_scored.inc(res.n_scored)
        self._scored_total += res.n_scored
        m.batch_seconds.observe(time.perf_counter() - t0)
        m.batch_size.observe(len(records))
        m.active_sensors.set(self.detector.active_sensors)
        evicted = self.detector.bank.evicted_total
        if evicted > self._evicted_seen:
            m.sensors_evicted.inc(evicted - self._evicted_seen)
            self._evicted_seen = evicted

    def _dead_letter(self, rec: Record, reason: str, detail: str) -> None:
        # Kafka Connect's convention: the original bytes untouched, context in headers.
        headers = [
            ("streamrnn.reason", reason.encode()),
            ("streamrnn.detail", detail.encode("utf-8", "replace")),
            ("streamrnn.topic", rec.topic.encode()),
            ("streamrnn.partition", str(rec.partition).encode()),
            ("streamrnn.offset", str(rec.offset).encode()),
        ]
        assert self.transport is not None
        self.transport.produce(self.cfg.kafka.dead_letter_topic, rec.key, rec.value if rec.value is not None else b"",
                               headers, on_error=self._produce_failed("dead_letter"))
        self.metrics.dead_letters.labels(reason=reason).inc()

    def _publish(self, ev: AlertEvent, partition: int) -> None:
        assert self.transport is not None
        key = (ev.sensor_id, ev.ts, ev.event)
        if key in self._suppress:
            # Published before a crash and recomputed from the replay: do not send it twice.
            self._suppress.discard(key)
            self.metrics.alerts_deduplicated.inc()
            return
        self.transport.produce(self.cfg.kafka.alerts_topic, ev.sensor_id.encode(), orjson.dumps(ev.to_dict()),
                               on_error=self._produce_failed("alert"), on_success=self._alert_acked)
        self.metrics.alert_events.labels(event=ev.event).inc()
        for sink in self.sinks:
            sink.submit(ev)
        if self.cfg.alerts.log:
            alert_log.warning("alert %s sensor=%s ts=%.3f value=%.6g forecast=%.6g score=%.6f model=%s", ev.event,
                              ev.sensor_id, ev.ts, ev.value, ev.forecast, ev.anomaly_score, ev.model_version,
                              extra={"sensor_id": ev.sensor_id, "partition": partition, "model_version": ev.model_version,
                                     "event": ev.event})

    def _alert_acked(self, md: object) -> None:
        # runs on the producer's I/O thread; a dict assignment is atomic under the GIL
        p, o = md.partition, md.offset  # type: ignore[attr-defined]
        if o + 1 > self._alerts_next.get(p, 0):
            self._alerts_next[p] = o + 1

    def _produce_failed(self, kind: str):
        def errback(exc: Exception) -> None:
            self.metrics.produce_errors.labels(topic_kind=kind).inc()
            log.error("failed to deliver %s record: %s", kind, exc)
        return errback

    # -- model lifecycle ----------------------------------------------------------------
    def _model_created(self) -> float:
        try:
            return self.registry.meta(self.detector.model_version).created
        except Exception:  # the packaged or a configured model: count from the start
            return time.time()

    def swap_model(self, model, version: str) -> None:
        """Serve another model from the next batch on (hidden states re-warmed)."""
        t0 = time.perf_counter()
        old = self.detector.model_version
        n = self.detector.swap_model(model, version)
        self.metrics.set_model_version(version)
        self.metrics.model_swaps.inc()
        log.info("serving model %s (was %s); re-warmed %d sensors in %.2fs", version, old, n, time.perf_counter() - t0)

    def _model_lifecycle(self) -> None:
        if self.retrainer is not None:
            promoted = self.retrainer.take_promoted()
            if promoted is not None:
                self.swap_model(*promoted)
            self.retrainer.maybe_start(self.detector, self._scored_total)
        if time.monotonic() - self._last_registry_poll >= self.cfg.training.registry_poll_seconds:
            self._last_registry_poll = time.monotonic()
            self._follow_registry()

    def _follow_registry(self) -> None:
        """Serve the registry's current version when it changed (rollback, another trainer)."""
        cur = self.registry.current()
        if cur is None or cur == self.detector.model_version:
            return
        mf = self.registry.load_serving()
        if mf is not None and mf.version != self.detector.model_version:
            self.swap_model(mf.model, mf.version)
            self.metrics.last_retrain_success.set(self._model_created())

    # -- durability -----------------------------------------------------------------
    def _part_index(self, tp: Partition) -> int:
        idx = self._part_ids.get(tp)
        if idx is None:
            idx = self._part_ids[tp] = len(self._part_ids)
        return idx

    def _owned(self, partitions: list[Partition]) -> dict[Partition, tuple[list[str], np.ndarray]]:
        """The ids and slots of the sensors each partition owns (one pass over the bank)."""
        ids, slots = self.detector.bank.held()
        ids_arr = np.array(ids, dtype=object)
        owner = self.detector.bank.arrays["owner"][slots]
        out = {}
        for tp in partitions:
            mask = owner == self._part_index(tp)
            out[tp] = ids_arr[mask].tolist(), slots[mask]
        return out

    def checkpoint_and_commit(self, partitions: list[Partition] | None = None, commit: bool = True) -> bool:
        """Flush produced records, save the state of the partitions with new readings
        (default all), then commit their offsets (unless ``commit`` is False). True on success."""
        if self.transport is None:
            return True
        todo = {tp: off for tp, off in self._pending.items() if partitions is None or tp in partitions}
        if not todo:
            return True
        try:
            self.transport.flush(_FLUSH_TIMEOUT_S)
        except KafkaError as e:
            # Alerts not acknowledged yet: keep the old state so a crash replays them.
            log.warning("producer flush failed, checkpoint postponed: %s", e)
            self._set_broker_up(False)
            return False
        t0 = time.perf_counter()
        bank = self.detector.bank
        states = {}
        meta = {"model_version": self.detector.model_version, "alerts_next": {str(p): o for p, o in self._alerts_next.items()}}
        for tp, (ids, slots) in self._owned(list(todo)).items():
            off = todo[tp]
            if self.store.incremental:
                touched = bank.touched_since(self._saved_tick, slots)
                ids, slots = [i for i, t in zip(ids, touched.tolist()) if t], slots[touched]
            states[tp] = PartitionState(ids, bank.pack(slots), off, meta)
        try:
            size = self.store.save(states)
        except (OSError, KafkaError) as e:
            log.error("saving state failed, offsets not committed: %s", e)
            return False
        if partitions is None:
            self._saved_tick = bank.tick
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self.metrics.checkpoint_bytes.set(size)
        self.metrics.last_checkpoint.set(time.time())
        self._last_checkpoint = time.monotonic()
        try:
            if commit:
                self.transport.commit(todo)
        except KafkaError as e:
            # The saved state is ahead of the committed offsets: the readings in between
            # are replayed and recognised as already seen, so nothing is scored twice.
            self.metrics.offset_commits.labels(result="failed").inc()
            log.warning("offset commit failed (will retry at the next checkpoint): %s", e)
        else:
            if commit:
                self.metrics.offset_commits.labels(result="ok").inc()
        for tp, off in todo.items():
            if self._pending.get(tp) == off:
                del self._pending[tp]
        return True

    def _restore(self, partitions: list[Partition]) -> None:
        """Load the saved state of newly assigned partitions before any of their readings."""
        t0 = time.perf_counter()
        try:
            states = self.store.load(partitions)
        except (CheckpointError, OSError, KafkaError) as e:
            log.error("state of %s unusable, those sensors start fresh: %s", partitions, e)
            return
        bank = self.detector.bank
        restored = 0
        models = set()
        alerts_from: dict[int, int] = {}
        for tp, st in states.items():
            slots = bank.unpack(st.ids, st.rows)
            bank.arrays["owner"][slots] = self._part_index(tp)
            restored += len(slots)
            models.add(st.meta.get("model_version"))
            for p, off in st.meta.get("alerts_next", {}).items():
                alerts_from[int(p)] = min(off, alerts_from.get(int(p), off))
            # Consumption resumes from the committed offset, which is never ahead of
            # the saved state; readings the state has already seen are dropped as stale.
        self.metrics.active_sensors.set(self.detector.active_sensors)
        if states:
            log.info("restored %d sensors of %d partitions in %.2fs", restored, len(states), time.perf_counter() - t0)
            self.metrics.restore_seconds.observe(time.perf_counter() - t0)
        if models - {self.detector.model_version, None}:
            # Hidden states belong to the model that made them: re-warm for this one.
            warmed = self.detector.swap_model(self.detector.model, self.detector.model_version)
            log.info("state was made by model(s) %s: re-warmed %d sensors for %s", sorted(m for m in models if m), warmed,
                     self.detector.model_version)
        if alerts_from and self.transport is not None:
            try:
                self._suppress |= self.transport.read_alert_keys(self.cfg.kafka.alerts_topic, alerts_from)
            except KafkaError as e:
                log.warning("could not read back recent alerts (%s): a replay may publish some twice", e)

    def _on_revoke(self, partitions: list[Partition]) -> None:
        log.info("partitions revoked: %s", partitions)
        # kafka-python runs this on its I/O thread, where a blocking commit is refused
        # (and the group is rebalancing anyway): save the state only. The next owner
        # restores it and drops the replayed readings it already reflects.
        self.checkpoint_and_commit(partitions, commit=False)
        for tp, (ids, _) in self._owned(partitions).items():
            self._pending.pop(tp, None)
            self.detector.bank.remove(ids)  # its state now belongs to whoever gets the partition
        self._assigned -= set(partitions)
        self.metrics.active_sensors.set(self.detector.active_sensors)

    def _on_assign(self, partitions: list[Partition]) -> None:
        log.info("partitions assigned: %s", partitions)
        new = [tp for tp in partitions if tp not in self._assigned]
        self._assigned = set(partitions)
        self.metrics.assigned_partitions.set(len(partitions))
        for tp in self._lag_labels - set(partitions):
            self.metrics.consumer_lag.remove(tp[0], str(tp[1]))
        self._lag_labels &= set(partitions)
        if new:
            self._restore(new)

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
        self._set_broker_up(self.transport.broker_reachable())

    def _set_broker_up(self, up: bool) -> None:
        if up != self._broker_up:
            (log.info if up else log.warning)("broker %s", "reachable" if up else "unreachable")
        self._broker_up = up
        self.metrics.broker_up.set(1 if up else 0)

    def readiness(self) -> dict[str, bool]:
        """The checks behind /readyz."""
        return {
            "partitions_assigned": bool(self._assigned),
            "broker_reachable": self._broker_up,
        }

