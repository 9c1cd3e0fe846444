"""The Kafka edge on confluent-kafka (librdkafka): the same edge, a faster client.

Implements :class:`~.base.Transport` with the same guarantees as the kafka-python
transport: offsets are committed only when the worker asks (never automatically),
rebalances call the worker's assign/revoke handlers inside :meth:`poll`, lag comes
from the high watermarks that fetch responses carry, and every client failure leaves
as :class:`~.base.TransportError`. Selected with ``kafka.client: confluent-kafka``;
:func:`client_settings` maps the ``kafka`` section (connection, SASL, SSL) onto
librdkafka's properties.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ...config import KafkaConfig
from .base import Batch, Delivery, OnAssign, Partition, RecordView, TransportError

__all__ = ["ConfluentTransport", "client_settings"]

log = logging.getLogger(__name__)
client_log = logging.getLogger("confluent_kafka")


def client_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka properties shared by consumer and producer."""
    s: dict[str, Any] = {
        "bootstrap.servers": ",".join(cfg.bootstrap_servers),
        "client.id": cfg.client_id,
        "security.protocol": cfg.security_protocol,
        "socket.timeout.ms": cfg.request_timeout_ms,
        "socket.connection.setup.timeout.ms": int(cfg.connect_timeout_seconds * 1000),
        "reconnect.backoff.ms": int(cfg.reconnect_backoff_initial_seconds * 1000),
        "reconnect.backoff.max.ms": int(cfg.reconnect_backoff_max_seconds * 1000),
        # the client's own log lines go through Python logging, where the CLI keeps them quiet
        "logger": client_log,
    }
    if cfg.security_protocol.startswith("SASL"):
        s["sasl.mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_plain_username is not None:
            s["sasl.username"] = cfg.sasl_plain_username
        if cfg.sasl_plain_password is not None:
            s["sasl.password"] = cfg.sasl_plain_password.get_secret_value()
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        for key, value in (("ssl.ca.location", cfg.ssl_cafile), ("ssl.certificate.location", cfg.ssl_certfile),
                           ("ssl.key.location", cfg.ssl_keyfile)):
            if value is not None:
                s[key] = value
        if cfg.ssl_password is not None:
            s["ssl.key.password"] = cfg.ssl_password.get_secret_value()
        s["ssl.endpoint.identification.algorithm"] = "https" if cfg.ssl_check_hostname else "none"
    return s


class ConfluentTransport:
    """A librdkafka group consumer over the configured topics plus one producer.

    Construction connects (it waits up to ``kafka.connect_timeout_seconds`` for the
    cluster's metadata) and raises :class:`TransportError` when the broker cannot be
    reached; the caller retries with backoff.
    """

    def __init__(self, cfg: KafkaConfig, *, on_assign: OnAssign, on_revoke: OnAssign) -> None:
        self.cfg = cfg
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._up = False
        self._up_lock = threading.Lock()
        common = client_settings(cfg)
        consumer_settings = {
            **common,
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": cfg.auto_offset_reset,
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
            "max.poll.interval.ms": cfg.max_poll_interval_ms,
            "fetch.wait.max.ms": cfg.fetch_max_wait_ms,
            "check.crcs": cfg.check_crcs,
            "enable.partition.eof": False,
            # broker connection states once a second, for broker_reachable()
            "statistics.interval.ms": 1000,
            "stats_cb": self._stats,
            "error_cb": self._error,
        }
        try:
            self.consumer = Consumer(consumer_settings)
            # keys land on the partitions the Java client (and kafka-python) would pick
            self.producer = Producer({**common, "acks": cfg.producer_acks, "linger.ms": cfg.producer_linger_ms,
                                      "partitioner": "murmur2_random", "error_cb": self._error})
            self.consumer.list_topics(timeout=cfg.connect_timeout_seconds)  # reachable now, or retry later
        except KafkaException as e:
            self._close_quietly()
            raise TransportError(f"cannot connect: {e}") from e
        self._set_up(True)
        self.consumer.subscribe(list(cfg.topics), on_assign=self._assigned, on_revoke=self._revoked)

    # -- client callbacks (called inside consume/poll, on this thread) ---------------
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._on_assign([(tp.topic, tp.partition) for tp in partitions])
        except Exception:  # an exception here would fail the rebalance over and over
            log.exception("partition assignment handler failed")

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._on_revoke([(tp.topic, tp.partition) for tp in partitions])
        except Exception:
            log.exception("partition revocation handler failed")

    def _stats(self, stats: str) -> None:
        brokers = json.loads(stats).get("brokers", {})
        self._set_up(any(b.get("state") == "UP" for b in brokers.values()))

    def _error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._set_up(False)
        client_log.debug("client error: %s", err)

    def _set_up(self, up: bool) -> None:
        with self._up_lock:
            self._up = up

    # -- the edge -------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> Batch:
        """One batch of messages across the assigned partitions (may be empty)."""
        try:
            msgs = self.consumer.consume(num_messages=self.cfg.max_poll_records, timeout=timeout_ms / 1000.0)
        except KafkaException as e:
            raise TransportError(f"poll failed: {e}") from e
        self.producer.poll(0)  # serve delivery reports of alerts and dead letters
        good: list[Any] = []  # messages without an error: their topic, partition and offset are set
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise TransportError(f"consumer failed: {err}")
            else:  # transient (the client retries): a broker gone, a partition moving
                log.debug("consume: %s", err)
        if not good:
            return Batch.empty()
        index: dict[Partition, int] = {}
        part_of = np.empty(len(good), dtype=np.int32)
        next_offsets: dict[Partition, int] = {}
        values: list[bytes | None] = []
        for i, m in enumerate(good):
            tp = (m.topic(), m.partition())
            part_of[i] = index.setdefault(tp, len(index))
            next_offsets[tp] = m.offset() + 1
            values.append(m.value())

        def record_at(i: int) -> RecordView:
            m = good[i]
            return RecordView(m.topic(), m.partition(), m.offset(), m.key(), m.value())

        return Batch(values, list(index), part_of, next_offsets, record_at)

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit ``next offset to read`` per partition, synchronously."""
        if not offsets:
            return
        if not self.broker_reachable():
            # librdkafka's synchronous commit waits out its request timeouts when no
            # broker answers, and the poll loop (and the broker_up report) with it
            raise TransportError("commit skipped: no broker reachable")
        try:
            done = self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as e:
            raise TransportError(f"commit failed: {e}") from e
        failed = [tp for tp in done or [] if tp.error is not None]
        if failed:
            raise TransportError(f"commit failed for {[(tp.topic, tp.partition, str(tp.error)) for tp in failed]}")

    def produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None, *,
                on_error: Callable[[Exception], None] | None = None,
                on_success: Callable[[Delivery], None] | None = None) -> None:
        """Queue a record; its delivery report goes to ``on_error`` or ``on_success``."""
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                if on_error is not None:
                    on_error(KafkaException(err))
            elif on_success is not None:
                done: Any = msg  # delivered: topic, partition and offset are set
                on_success(Delivery(done.topic(), done.partition(), done.offset()))

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=cast(Any, headers), on_delivery=report)
                return
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                self.producer.poll(0.05)
            except KafkaException as e:
                if on_error is None:
                    raise TransportError(f"produce failed: {e}") from e
                on_error(e)
                return

    def produce_many(self, topic: str, records: list[tuple[bytes, bytes]], *,
                     on_error: Callable[[bytes, bytes, Exception], None]) -> None:
        """Queue many ``(key, value)`` records; each refused one goes to ``on_error(key, value, exc)``."""
        def report(err: KafkaError | None, msg: Message) -> None:  # one callback for them all
            if err is not None:
                on_error(cast(bytes, msg.key()), cast(bytes, msg.value()), KafkaException(err))

        produce = self.producer.produce
        for key, value in records:
            while True:
                try:
                    produce(topic, value=value, key=key, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then retry
                    self.producer.poll(0.05)
                except KafkaException as e:
                    on_error(key, value, e)
                    break

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record has its delivery report (TransportError on timeout)."""
        left = self.producer.flush(timeout_s)
        if left:
            raise TransportError(f"{left} records not acknowledged within {timeout_s}s")

    def lag(self) -> dict[Partition, int]:
        """Messages behind the high watermark per assigned partition, where known.

        The high watermark is the one the last fetch response carried (``cached=True``):
        ListOffsets is not used, as some Kafka-compatible brokers answer it wrongly.
        """
        out: dict[Partition, int] = {}
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned) if assigned else []
        except KafkaException:
            return out
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset != OFFSET_INVALID and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def broker_reachable(self) -> bool:
        """True while a connection to at least one broker is up (from the client's statistics)."""
        with self._up_lock:
            return self._up

    def partition_count(self, topic: str) -> int:
        """Partitions of a topic (1 if unknown)."""
        try:
            meta = self.consumer.list_topics(topic, timeout=self.cfg.connect_timeout_seconds)
        except KafkaException:
            return 1
        t = meta.topics.get(topic)
        return len(t.partitions) if t is not None and t.partitions else 1

    def read_alert_keys(self, topic: str, from_offsets: dict[int, int], timeout: float = 30.0) -> set[tuple[str, float, str, str]]:
        """``(sensor_id, ts, event, kind)`` of the alerts published from these offsets to the end."""
        keys: set[tuple[str, float, str, str]] = set()
        if not from_offsets:
            return keys
        reader = Consumer({**client_settings(self.cfg), "group.id": f"{self.cfg.group_id}-alert-readback",
                           "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 50})
        try:
            tps = [TopicPartition(topic, p, o) for p, o in from_offsets.items()]
            reader.assign(tps)
            pending = {tp.partition for tp in tps}
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise TransportError(f"{topic} partitions {sorted(pending)} not read to their end within {timeout}s")
                for m in reader.consume(num_messages=10000, timeout=0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(m.partition())
                        continue
                    try:
                        a = orjson.loads(m.value() or b"")
                        keys.add((a["sensor_id"], float(a["ts"]), a["event"], a.get("kind", "anomaly")))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
        except KafkaException as e:
            raise TransportError(f"reading back {topic} failed: {e}") from e
        finally:
            reader.close()
        return keys

    def close(self) -> None:
        """Deliver what is queued, leave the group and close both clients."""
        try:
            self.producer.flush(10)
        finally:
            self.consumer.close()

    def _close_quietly(self) -> None:
        for name in ("consumer",):
            client = getattr(self, name, None)
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing after a failed connect: nothing else to do
                    pass
