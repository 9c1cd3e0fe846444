"""Partition state in a compacted Kafka changelog topic: several nodes.

One record per sensor keyed ``topic/partition/sensor`` plus one metadata record per
partition, the way Kafka Streams keeps state: a partition's state moves with the
partition to whichever worker of the group gets it. Only sensors touched since the
last save are written; a restore reads the changelog partition to its end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from ...config import KafkaConfig
from ..transport.admin import TopicSpec, ensure_topics
from ..transport.base import Partition, TransportError
from ..transport.kafka_python import client_settings, read_to_end
from .base import PartitionState

__all__ = ["ChangelogStateStore"]

log = logging.getLogger(__name__)

_MAGIC = b"SRN1"


def _schema_hash(dtype: np.dtype) -> bytes:
    return hashlib.sha256(json.dumps(dtype.descr).encode()).digest()[:8]


class ChangelogStateStore:
    """Sensor rows in a compacted Kafka topic; only sensors touched since the last save are written."""

    incremental = True

    def __init__(self, kafka_cfg: KafkaConfig, *, topic: str, row_dtype: np.dtype, partitions: int) -> None:
        self.kafka_cfg = kafka_cfg
        self.topic = topic
        self.row_dtype = row_dtype
        self.schema = _schema_hash(row_dtype)
        self.partitions = max(1, int(partitions))
        self.corrupt_total = 0
        settings = client_settings(kafka_cfg)
        ensure_topics(settings, {topic: TopicSpec(self.partitions, configs={"cleanup.policy": "compact",
                                                                             "min.compaction.lag.ms": "60000"})})
        try:
            self.producer = KafkaProducer(acks="all", linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20, **settings)
        except KafkaError as e:
            raise TransportError(f"cannot connect the changelog producer: {e}") from e

    def _cp(self, tp: Partition) -> int:
        return tp[1] % self.partitions

    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Send the rows and each partition's metadata; returns after every record is acknowledged."""
        try:
            total = self._send(states)
            self.producer.flush(timeout=60)
        except KafkaError as e:
            raise TransportError(f"changelog write not acknowledged: {e}") from e
        return total

    def _send(self, states: dict[Partition, PartitionState]) -> int:
        total = 0
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
            self.producer.send(self.topic, key=prefix.encode(), value=meta, partition=cp)
            total += len(meta)
        return total

    def load(self, partitions: list[Partition], timeout: float = 120.0) -> dict[Partition, PartitionState]:
        """Read the changelog to its end and rebuild the requested partitions."""
        wanted = {f"{t}/{p}/": (t, p) for t, p in partitions}
        if not wanted:
            return {}
        start = {TopicPartition(self.topic, cp): None for cp in sorted({self._cp(tp) for tp in partitions})}
        latest: dict[bytes, bytes] = {}
        try:
            for r in read_to_end(self.kafka_cfg, start, timeout, max_poll_records=20000, max_partition_fetch_bytes=16 << 20):
                latest[r.key] = r.value  # compaction semantics: the last value per key wins
        except KafkaError as e:
            raise TransportError(f"reading the changelog failed: {e}") from e
        rows: dict[Partition, tuple[list[str], list[bytes]]] = {tp: ([], []) for tp in partitions}
        metas: dict[Partition, dict[str, Any]] = {}
        header = _MAGIC + self.schema
        size = len(header) + self.row_dtype.itemsize
        for key, value in latest.items():
            k = key.decode(errors="replace")
            parts = k.split("/", 2)  # topic names cannot hold '/', sensor ids can
            if len(parts) != 3:
                continue
            tp, sid = wanted.get(f"{parts[0]}/{parts[1]}/"), parts[2]
            if tp is None or value is None:  # not asked for, or a tombstone
                continue
            if not sid:
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
            elif value[:len(header)] == header and len(value) == size:
                rows[tp][0].append(sid)
                rows[tp][1].append(value[len(header):])
            elif value[:len(_MAGIC)] == _MAGIC and value[:len(header)] != header:
                log.warning("changelog row %s has another schema; that sensor starts fresh", k)
            else:
                self.corrupt_total += 1
                log.error("changelog row %s unusable (%d bytes): that sensor starts fresh", k, len(value))
        out = {}
        for tp, meta in metas.items():
            ids, blobs = rows[tp]
            arr = np.frombuffer(b"".join(blobs), dtype=self.row_dtype) if blobs else np.zeros(0, dtype=self.row_dtype)
            out[tp] = PartitionState(ids, arr, int(meta.pop("offset")), meta)
        return out

    def close(self) -> None:
        """Flush and close the producer."""
        self.producer.close(timeout=10)
