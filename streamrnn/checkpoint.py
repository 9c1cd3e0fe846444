"""Durable per-partition state: a local directory or a compacted Kafka changelog.

A sensor's state belongs to the Kafka partition its readings arrive on. The worker
saves the state of each partition together with the offset it reflects, and commits
that offset to Kafka only afterwards; on assignment it restores the partition's state
and resumes from the saved offset. Two backends share one interface:

* :class:`LocalStateStore`: one ``.npz`` file per partition in ``state.dir``, written
  atomically (temporary file, fsync, rename) with a sha256 sidecar. One node.
* :class:`ChangelogStateStore`: a compacted Kafka topic, one record per sensor keyed
  ``topic/partition/sensor`` plus one metadata record per partition, as Kafka Streams
  keeps state. Several nodes: a partition's state moves with the partition.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .core.model import atomic_write_bytes

__all__ = ["PartitionState", "StateStore", "LocalStateStore", "ChangelogStateStore", "CheckpointError"]

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class CheckpointError(RuntimeError):
    """Saved state that cannot be read or does not match its checksum."""


@dataclass
class PartitionState:
    """The state of one partition's sensors and the offset it reflects."""

    ids: list[str]
    rows: np.ndarray
    offset: int
    meta: dict = field(default_factory=dict)


class StateStore(Protocol):
    """Where partition state is kept."""

    incremental: bool

    def save(self, states: dict[Partition, PartitionState]) -> int: ...
    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]: ...
    def close(self) -> None: ...


class LocalStateStore:
    """Per-partition ``.npz`` files in a directory (each save holds a full partition)."""

    incremental = False

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "partitions"

    def path(self, tp: Partition) -> Path:
        # '~' cannot appear in a Kafka topic name, so it separates topic and partition.
        return self.dir / f"{tp[0]}~{tp[1]}.npz"

    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Write each partition's file atomically; returns the bytes written."""
        total = 0
        for tp, st in states.items():
            buf = io.BytesIO()
            meta = {**st.meta, "offset": st.offset, "saved_at": time.time()}
            ids = np.array(st.ids, dtype=str) if st.ids else np.zeros(0, dtype="<U1")
            np.savez(buf, ids=ids, rows=st.rows, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
            data = buf.getvalue()
            path = self.path(tp)
            # data first, then the checksum naming it: a crash in between is detected on load
            atomic_write_bytes(path, data)
            atomic_write_bytes(path.with_name(path.name + ".sha256"), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
            total += len(data)
        return total

    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]:
        """The saved state of those partitions that have one (unusable files are logged and skipped)."""
        out = {}
        for tp in partitions:
            path = self.path(tp)
            if not path.exists():
                continue
            try:
                data = path.read_bytes()
                expected = path.with_name(path.name + ".sha256").read_text().split()[0]
                if hashlib.sha256(data).hexdigest() != expected:
                    raise CheckpointError("sha256 does not match")
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    meta = json.loads(z["meta"].tobytes().decode())
                    out[tp] = PartitionState([str(s) for s in z["ids"].tolist()], z["rows"], int(meta.pop("offset")), meta)
            except (OSError, ValueError, KeyError, IndexError, CheckpointError) as e:
                log.error("state of %s/%d unusable (%s): its sensors start fresh", tp[0], tp[1], e)
        return out

    def close(self) -> None:
        """Nothing to release."""


_MAGIC = b"SRN1"


def _schema_hash(dtype: np.dtype) -> bytes:
    return hashlib.sha256(json.dumps(dtype.descr).encode()).digest()[:8]


class ChangelogStateStore:
    """Sensor rows in a compacted Kafka topic; only sensors touched since the last save are written."""

    incremental = True

    def __init__(self, kafka_cfg: "object", topic: str, row_dtype: np.dtype, partitions: int) -> None:
        from kafka import KafkaProducer

        from .transport import client_settings

        self.kafka_cfg = kafka_cfg
        self.topic = topic
        self.row_dtype = row_dtype
        self.schema = _schema_hash(row_dtype)
        self.partitions = max(1, int(partitions))
        self._settings = client_settings(kafka_cfg)  # type: ignore[arg-type]
        self.ensure_topic()
        self.producer = KafkaProducer(acks="all", linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20, **self._settings)

    def ensure_topic(self) -> None:
        """Create the changelog topic (compacted) if it does not exist."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(**self._settings)
        try:
            if self.topic not in admin.list_topics():
                try:
                    admin.create_topics([NewTopic(self.topic, num_partitions=self.partitions, replication_factor=-1,
                                                  topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})])
                    log.info("created state changelog topic %s (%d partitions, compacted)", self.topic, self.partitions)
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def _cp(self, tp: Partition) -> int:
        return tp[1] % self.partitions

    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Send the rows and each partition's metadata; returns after every record is acknowledged."""
        total = 0
        header = _MAGIC + self.schema
        for tp, st in states.items():
            prefix = f"{tp[0]}/{tp[1]}/"
            cp = self._cp(tp)
            raw = st.rows.tobytes()
            size = self.row_dtype.itemsize
            for i, sid in enumerate(st.ids):
                value = header + raw[i * size:(i + 1) * size]
                self.producer.send(self.topic, key=(prefix + sid).encode(), value=value, partition=cp)
                total += len(value)
            meta = json.dumps({**st.meta, "offset": st.offset, "saved_at": time.time()}).encode()
            self.producer.send(self.topic, key=prefix.encode(), value=meta, partition=cp)
            total += len(meta)
        self.producer.flush(timeout=60)
        return total

    def load(self, partitions: list[Partition], timeout: float = 120.0) -> dict[Partition, PartitionState]:
        """Read the changelog to its end and rebuild the requested partitions."""
        from kafka.structs import TopicPartition

        from .transport import read_to_end

        wanted = {f"{t}/{p}/": (t, p) for t, p in partitions}
        if not wanted:
            return {}
        start = {TopicPartition(self.topic, cp): None for cp in sorted({self._cp(tp) for tp in partitions})}
        latest: dict[bytes, bytes] = {}
        for r in read_to_end(self.kafka_cfg, start, timeout, max_poll_records=20000, max_partition_fetch_bytes=16 << 20):
            latest[r.key] = r.value  # compaction semantics: the last value per key wins
        rows: dict[Partition, tuple[list[str], list[bytes]]] = {tp: ([], []) for tp in partitions}
        metas: dict[Partition, dict] = {}
        header = _MAGIC + self.schema
        for key, value in latest.items():
            k = key.decode()
            parts = k.split("/", 2)  # topic names cannot hold '/', sensor ids can
            if len(parts) != 3:
                continue
            tp, sid = wanted.get(f"{parts[0]}/{parts[1]}/"), parts[2]
            if tp is None or value is None:
                continue
            if not sid:
                metas[tp] = json.loads(value)
            elif value[:12] == header:
                rows[tp][0].append(sid)
                rows[tp][1].append(value[12:])
            else:
                log.warning("changelog row %s has another schema; that sensor starts fresh", k)
        out = {}
        for tp, meta in metas.items():
            ids, blobs = rows[tp]
            arr = np.frombuffer(b"".join(blobs), dtype=self.row_dtype) if blobs else np.zeros(0, dtype=self.row_dtype)
            out[tp] = PartitionState(ids, arr, int(meta.pop("offset")), meta)
        return out

    def close(self) -> None:
        """Flush and close the producer."""
        self.producer.close(timeout=10)
