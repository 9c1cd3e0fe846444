"""Partition state in a compacted Kafka changelog topic: several nodes.

One record per sensor keyed ``topic/partition/sensor`` plus one metadata record per
partition, the way Kafka Streams keeps state: a partition's state moves with the
partition to whichever worker of the group gets it. Only sensors changed since the
last save are written, removed ones as tombstones.

Like Kafka Streams, each worker also keeps what it wrote in a local cache (a
:class:`~.local.LocalStateStore`) together with the changelog offset after the
partition's last record. A restore then reads the changelog only from that offset
(what other workers wrote since, if any) instead of from the beginning; a partition
without a usable cache position is read from the beginning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import TopicPartition

from ...config import KafkaConfig
from ..transport.admin import TopicSpec, ensure_topics
from ..transport.base import Partition, TransportError
from ..transport.kafka_python import client_settings, read_to_end
from .base import PartitionState
from .local import LocalStateStore, dtype_text

__all__ = ["ChangelogStateStore"]

log = logging.getLogger(__name__)

_MAGIC = b"SRN1"
_NEXT = "changelog_next"  # in the cache's metadata: the changelog offset it reflects up to


def _schema_hash(dtype: np.dtype) -> bytes:
    return hashlib.sha256(json.dumps(dtype.descr).encode()).digest()[:8]


class ChangelogStateStore:
    """Sensor rows in a compacted Kafka topic; a save writes only the sensors changed since the last."""

    def __init__(self, kafka_cfg: KafkaConfig, *, topic: str, row_dtype: np.dtype, partitions: int,
                 cache_dir: str | Path | None = None) -> None:
        """``cache_dir``: where the local cache lives (None: none, every restore reads
        the changelog from the beginning)."""
        self.kafka_cfg = kafka_cfg
        self.topic = topic
        self.row_dtype = row_dtype
        self.schema = _schema_hash(row_dtype)
        self.partitions = max(1, int(partitions))
        self.cache = LocalStateStore(Path(cache_dir) / "changelog-cache", row_dtype=row_dtype) if cache_dir else None
        self.cache_dtype = dtype_text(row_dtype)
        self.corrupt_total = 0
        self.records_read = 0
        """Changelog records the last :meth:`load` read (after the cache's positions)."""
        settings = client_settings(kafka_cfg)
        ensure_topics(settings, {topic: TopicSpec(self.partitions, configs={"cleanup.policy": "compact",
                                                                             "min.compaction.lag.ms": "60000"})})
        try:
            self.producer = KafkaProducer(acks="all", linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20, **settings)
        except KafkaError as e:
            raise TransportError(f"cannot connect the changelog producer: {e}") from e

    def _cp(self, tp: Partition) -> int:
        return tp[1] % self.partitions

    # -- saving -------------------------------------------------------------------------
    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Send the changed rows, tombstones and each partition's metadata; returns after
        every record is acknowledged (then the local cache takes the same changes)."""
        try:
            total, last = self._send(states)
            self.producer.flush(timeout=60)
            ends = {tp: f.get(timeout=0).offset + 1 for tp, f in last.items()}
        except KafkaError as e:
            raise TransportError(f"changelog write not acknowledged: {e}") from e
        self._cache_save(states, ends)
        return total

    def _send(self, states: dict[Partition, PartitionState]) -> tuple[int, dict[Partition, FutureRecordMetadata]]:
        total = 0
        last = {}
        header = _MAGIC + self.schema
        for tp, st in states.items():
            prefix = f"{tp[0]}/{tp[1]}/"
            cp = self._cp(tp)
            for sid in st.removed:  # before the rows: a sensor evicted and back since keeps its new row
                self.producer.send(self.topic, key=(prefix + sid).encode(), value=None, partition=cp)
            raw = st.rows.tobytes()
            size = self.row_dtype.itemsize
            for i, sid in enumerate(st.ids):
                value = header + raw[i * size:(i + 1) * size]
                self.producer.send(self.topic, key=(prefix + sid).encode(), value=value, partition=cp)
                total += len(value)
            meta = json.dumps({**st.meta, "offset": st.offset, "saved_at": time.time()}).encode()
            # the partition's last record: its offset is where a restore from the cache reads on
            last[tp] = self.producer.send(self.topic, key=prefix.encode(), value=meta, partition=cp)
            total += len(meta)
        return total, last

    def _cache_save(self, states: dict[Partition, PartitionState], ends: dict[Partition, int]) -> None:
        """Apply a save to the cache. The cache is only a shortcut: when it cannot be
        written it keeps its older position, from which a restore reads on correctly."""
        if self.cache is None:
            return
        try:
            self.cache.save({tp: PartitionState(st.ids, st.rows, st.offset, {**st.meta, _NEXT: ends[tp]}, st.removed)
                             for tp, st in states.items()})
        except OSError as e:
            log.warning("changelog cache not updated (%s): the next restore reads more of the changelog", e)

    # -- loading ------------------------------------------------------------------------
    def load(self, partitions: list[Partition], timeout: float = 120.0) -> dict[Partition, PartitionState]:
        """Rebuild the requested partitions: the cache, then what the changelog holds after it."""
        if not partitions:
            return {}
        cached = self._cached_positions(partitions)
        start: dict[TopicPartition, int | None] = {}
        for tp in partitions:  # per changelog partition, the earliest position any of its partitions needs
            ctp = TopicPartition(self.topic, self._cp(tp))
            pos = cached.get(tp)  # None: from the beginning
            if ctp not in start:
                start[ctp] = pos
            elif start[ctp] is not None:
                start[ctp] = None if pos is None else min(pos, start[ctp] or 0)
        delta = self._read(partitions, start, cached, timeout)
        if self.cache is None:
            return delta
        if delta:
            try:
                self.cache.save(delta)
            except OSError as e:  # the cache cannot take the delta: restore from the changelog alone
                log.warning("changelog cache not updated (%s): reading the changelog from the beginning", e)
                return self._read(partitions, dict.fromkeys(start), {}, timeout)
        return self.cache.load(partitions)

    def _cached_positions(self, partitions: list[Partition]) -> dict[Partition, int]:
        """The changelog offset each partition's cache reflects up to, where the cache
        holds rows of this version and the changelog still holds that offset."""
        if self.cache is None:
            return {}
        want = {}
        for tp in partitions:
            saved = self.cache.saved_meta(tp)
            if saved is None:
                continue
            meta, layout = saved
            if isinstance(meta.get(_NEXT), int) and layout == self.cache_dtype:
                want[tp] = int(meta[_NEXT])
            else:  # rows of another version: rebuilt from the changelog
                self.cache.forget(tp)
        if not want:
            return {}
        first = self._log_start({self._cp(tp) for tp in want})
        out = {}
        for tp, pos in want.items():
            if pos >= first.get(self._cp(tp), 0):
                out[tp] = pos
            else:
                log.warning("changelog cache of %s/%d is at offset %d, before the changelog's start: read from the start",
                            tp[0], tp[1], pos)
                self.cache.forget(tp)
        return out

    def _log_start(self, cps: set[int]) -> dict[int, int]:
        """The first offset of these changelog partitions. (Only the start: ListOffsets
        for the end is unreliable on some Kafka-compatible brokers.)"""
        tps = [TopicPartition(self.topic, cp) for cp in sorted(cps)]
        try:
            c = KafkaConsumer(group_id=None, enable_auto_commit=False, **client_settings(self.kafka_cfg))
            try:
                first = c.beginning_offsets(tps)
            finally:
                c.close()
        except KafkaError as e:
            raise TransportError(f"reading the changelog's start offsets failed: {e}") from e
        return {tp.partition: int(first[tp]) for tp in tps}

    def _read(self, partitions: list[Partition], start: dict[TopicPartition, int | None], cached: dict[Partition, int],
              timeout: float) -> dict[Partition, PartitionState]:
        """The changes the changelog holds for each partition after its cached position
        (all of it for a partition without one), as states to merge into the cache."""
        wanted = {f"{t}/{p}/": (t, p) for t, p in partitions}
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        ends: dict[int, int] = {}
        self.records_read = 0
        try:
            for r in read_to_end(self.kafka_cfg, start, timeout, max_poll_records=20000, max_partition_fetch_bytes=16 << 20):
                latest[r.key] = (r.offset, r.value)  # compaction semantics: the last value per key wins
                ends[r.partition] = r.offset + 1
                self.records_read += 1
        except KafkaError as e:
            raise TransportError(f"reading the changelog failed: {e}") from e
        rows: dict[Partition, tuple[list[str], list[bytes]]] = {tp: ([], []) for tp in partitions}
        removed: dict[Partition, list[str]] = {tp: [] for tp in partitions}
        metas: dict[Partition, dict[str, Any]] = {}
        header = _MAGIC + self.schema
        size = len(header) + self.row_dtype.itemsize
        for key, (offset, value) in latest.items():
            k = key.decode(errors="replace")
            parts = k.split("/", 2)  # topic names cannot hold '/', sensor ids can
            if len(parts) != 3:
                continue
            tp, sid = wanted.get(f"{parts[0]}/{parts[1]}/"), parts[2]
            if tp is None or offset < cached.get(tp, 0):  # not asked for, or already in the cache
                continue
            if value is None:
                if sid:
                    removed[tp].append(sid)
            elif not sid:
                try:
                    meta = json.loads(value)
                    int(meta["offset"])
                    metas[tp] = meta
                except (ValueError, TypeError, KeyError) as e:
                    self.corrupt_total += 1
                    log.error("changelog metadata of %s/%d unusable (%s): its sensors start fresh", tp[0], tp[1], e)
                    metas.pop(tp, None)
                    rows[tp] = ([], [])
                    wanted.pop(f"{parts[0]}/{parts[1]}/")
                    if self.cache is not None:
                        self.cache.forget(tp)
            elif value[:len(header)] == header and len(value) == size:
                rows[tp][0].append(sid)
                rows[tp][1].append(value[len(header):])
            elif value[:len(_MAGIC)] == _MAGIC and value[:len(header)] != header:
                log.warning("changelog row %s has another schema; that sensor starts fresh", k)
                removed[tp].append(sid)
            else:
                self.corrupt_total += 1
                log.error("changelog row %s unusable (%d bytes): that sensor starts fresh", k, len(value))
                removed[tp].append(sid)
        out = {}
        for tp, meta in metas.items():
            ids, blobs = rows[tp]
            arr = np.frombuffer(b"".join(blobs), dtype=self.row_dtype) if blobs else np.zeros(0, dtype=self.row_dtype)
            meta[_NEXT] = ends.get(self._cp(tp), cached.get(tp, 0))
            out[tp] = PartitionState(ids, arr, int(meta.pop("offset")), meta, removed[tp])
        return out

    def close(self) -> None:
        """Flush and close the producer and the cache."""
        self.producer.close(timeout=10)
        if self.cache is not None:
            self.cache.close()
