"""The Kafka edge on kafka-python: poll record batches, commit offsets, produce, lag.

Implements :class:`~.base.Transport`; every kafka-python error leaves this module as a
:class:`~.base.TransportError`. :func:`client_settings` maps the ``kafka`` section of
the configuration (connection, SASL, SSL) onto kafka-python's settings, and
:func:`read_to_end` reads partitions to their high watermark (changelog restore,
alert read-back, ``streamrnn train``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ...config import KafkaConfig
from .base import Batch, Delivery, OnAssign, Partition, Record, TransportError

__all__ = ["KafkaPythonTransport", "client_settings", "read_to_end"]

log = logging.getLogger(__name__)


def client_settings(cfg: KafkaConfig) -> dict[str, object]:
    """Connection settings shared by consumer, producer and admin client."""
    s: dict[str, object] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
        "bootstrap_timeout_ms": int(cfg.connect_timeout_seconds * 1000),
        "reconnect_backoff_ms": int(cfg.reconnect_backoff_initial_seconds * 1000),
        "reconnect_backoff_max_ms": int(cfg.reconnect_backoff_max_seconds * 1000),
    }
    if cfg.security_protocol.startswith("SASL"):
        s["sasl_mechanism"] = cfg.sasl_mechanism
        s["sasl_plain_username"] = cfg.sasl_plain_username
        s["sasl_plain_password"] = cfg.sasl_plain_password.get_secret_value() if cfg.sasl_plain_password else None
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        s.update(ssl_cafile=cfg.ssl_cafile, ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile,
                 ssl_password=cfg.ssl_password.get_secret_value() if cfg.ssl_password else None,
                 ssl_check_hostname=cfg.ssl_check_hostname)
    return s


def read_to_end(cfg: KafkaConfig, start: Mapping[TopicPartition, int | None], timeout: float = 120.0,
                **consumer_settings: Any) -> Iterator[ConsumerRecord]:
    """Records of these partitions from ``start`` (None: the beginning) to their current end.

    The end is the high watermark that fetch responses carry, not ListOffsets (which
    some Kafka-compatible brokers answer wrongly). Raises ``KafkaTimeoutError`` when the
    end is not reached within ``timeout`` seconds.
    """
    if not start:
        return
    # A start no longer in the log reads from the log's start, not from its end.
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50, auto_offset_reset="earliest",
                      **{**client_settings(cfg), **consumer_settings})
    try:
        tps = list(start)
        c.assign(tps)
        for tp, off in start.items():
            if off is None:
                c.seek_to_beginning(tp)
            else:
                c.seek(tp, off)
        deadline = time.monotonic() + timeout
        while True:
            for recs in c.poll(timeout_ms=200).values():
                yield from recs
            if all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps):
                return
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(f"{sorted(str(tp) for tp in tps)} not read to their end within {timeout}s")
    finally:
        c.close()


@dataclass
class _Listener(ConsumerRebalanceListener):
    on_assign: OnAssign
    on_revoke: OnAssign

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            self.on_revoke([(tp.topic, tp.partition) for tp in revoked])
        except Exception:  # an exception here would fail the rebalance over and over
            log.exception("partition revocation handler failed")

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            self.on_assign([(tp.topic, tp.partition) for tp in assigned])
        except Exception:
            log.exception("partition assignment handler failed")


class KafkaPythonTransport:
    """A kafka-python group consumer over the configured topics plus one producer.

    Construction connects; it raises :class:`TransportError` when the broker cannot be
    reached, and the caller retries with backoff.
    """

    def __init__(self, cfg: KafkaConfig, *, on_assign: OnAssign, on_revoke: OnAssign) -> None:
        try:
            self._connect(cfg, on_assign, on_revoke)
        except KafkaError as e:
            raise TransportError(f"cannot connect: {e}") from e

    def _connect(self, cfg: KafkaConfig, on_assign: OnAssign, on_revoke: OnAssign) -> None:
        self.cfg = cfg
        common = client_settings(cfg)
        self.consumer = KafkaConsumer(
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            max_poll_records=cfg.max_poll_records,
            check_crcs=cfg.check_crcs,
            **common,
        )
        try:
            self.producer = KafkaProducer(
                acks="all" if cfg.producer_acks == "all" else int(cfg.producer_acks),
                linger_ms=cfg.producer_linger_ms,
                # kafka-python's cost per record grows with the batches it opens (the
                # default 16 KiB holds ~60 scores records): room for a poll batch's worth
                batch_size=512 * 1024,
                **common,
            )
        except Exception:
            self.consumer.close()
            raise
        self.consumer.subscribe(list(cfg.topics), listener=_Listener(on_assign, on_revoke))
        self._warned_reachability = False

    def poll(self, timeout_ms: int) -> Batch:
        """One batch of records across the assigned partitions (may be empty)."""
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_poll_records)
        except KafkaError as e:
            raise TransportError(f"poll failed: {e}") from e
        records: list[Record] = []
        values: list[bytes | None] = []
        partitions: list[Partition] = []
        sizes: list[int] = []
        next_offsets: dict[Partition, int] = {}
        for tp, recs in polled.items():
            if recs:
                key = (tp.topic, tp.partition)
                partitions.append(key)
                sizes.append(len(recs))
                next_offsets[key] = recs[-1].offset + 1
                records.extend(recs)
                values.extend([r.value for r in recs])
        part_of = np.repeat(np.arange(len(partitions), dtype=np.int32), sizes)
        return Batch(values, partitions, part_of, next_offsets, records.__getitem__)

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit ``next offset to read`` per partition, synchronously."""
        if offsets:
            try:
                # bounded: without a timeout a commit to a broker that just died holds the
                # poll loop (and the broker_up report) for its whole request timeout
                self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()},
                                     timeout_ms=int(self.cfg.commit_timeout_seconds * 1000))
            except KafkaError as e:
                raise TransportError(f"commit failed: {e}") from e

    def produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None, *,
                on_error: Callable[[Exception], None] | None = None,
                on_success: Callable[[Delivery], None] | None = None) -> None:
        """Queue a record; delivery failures go to ``on_error``, where it landed to ``on_success``."""
        try:
            fut = self.producer.send(topic, key=key, value=value, headers=headers or None)
        except KafkaError as e:
            if on_error is None:
                raise TransportError(f"produce failed: {e}") from e
            on_error(e)
            return
        if on_error is not None:
            fut.add_errback(on_error)
        if on_success is not None:
            done = on_success
            fut.add_callback(lambda md: done(Delivery(md.topic, md.partition, md.offset)))

    def produce_many(self, topic: str, records: list[tuple[bytes, bytes]], *,
                     on_error: Callable[[bytes, bytes, Exception], None]) -> None:
        """Queue many ``(key, value)`` records; each refused one goes to ``on_error(key, value, exc)``."""
        send = self.producer.send
        for key, value in records:
            try:
                send(topic, key=key, value=value).add_errback(on_error, key, value)
            except KafkaError as e:
                on_error(key, value, e)

    def partition_count(self, topic: str) -> int:
        """Partitions of a topic (1 if unknown)."""
        parts = self.consumer.partitions_for_topic(topic)
        return len(parts) if parts else 1

    def read_alert_keys(self, topic: str, from_offsets: dict[int, int], timeout: float = 30.0) -> set[tuple[str, float, str, str]]:
        """``(sensor_id, ts, event, kind)`` of the alerts published from these offsets to the end."""
        keys: set[tuple[str, float, str, str]] = set()
        try:
            for r in read_to_end(self.cfg, {TopicPartition(topic, p): o for p, o in from_offsets.items()}, timeout):
                try:
                    a = orjson.loads(r.value)
                    keys.add((a["sensor_id"], float(a["ts"]), a["event"], a.get("kind", "anomaly")))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        except KafkaError as e:
            raise TransportError(f"reading back {topic} failed: {e}") from e
        return keys

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record is acknowledged (TransportError on timeout)."""
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as e:
            raise TransportError(f"flush failed: {e}") from e

    def lag(self) -> dict[Partition, int]:
        """Messages behind the high watermark per assigned partition, where known.

        Computed from the high watermark that fetch responses carry; ListOffsets-based
        ``end_offsets`` is not used (some Kafka-compatible brokers answer it wrongly).
        """
        out: dict[Partition, int] = {}
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if pos is not None:
                out[(tp.topic, tp.partition)] = max(0, hw - pos)
        return out

    def broker_reachable(self) -> bool:
        """True while a connection to at least one broker is up."""
        try:
            client = self.consumer._client  # kafka-python exposes no public connection state
            brokers = client.cluster.brokers()
            return any(client.connected(b.node_id) for b in brokers) or client.bootstrap_connected()
        except AttributeError as e:  # a kafka-python release changed these internals
            if not self._warned_reachability:
                log.warning("cannot read broker connection state from kafka-python (%s); reporting it as up", e)
                self._warned_reachability = True
            return True

    def close(self) -> None:
        """Leave the group and close both clients."""
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close(autocommit=False)

