"""The Kafka edge as the daemon sees it: records in, offsets and records out.

Kept narrow on purpose: plain :class:`Record` tuples, ``(topic, partition)`` keys,
offsets as ints, delivery reports as callbacks. Each client library
(:mod:`.kafka_python`, the default) implements :class:`Transport` and raises
:class:`TransportError` for every client failure, so the worker, the checkpoint
coordinator and their tests never touch a client's own types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

__all__ = ["Batch", "Delivery", "OnAssign", "Partition", "Record", "RecordView", "Transport", "TransportError"]

Partition = tuple[str, int]
"""A topic partition: ``(topic, partition number)``."""

OnAssign = Callable[[list[Partition]], None]


class TransportError(RuntimeError):
    """The broker could not be reached or refused a request (the client retries underneath)."""


class Record(Protocol):
    """One consumed message."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored a produced record."""

    topic: str
    partition: int
    offset: int


class RecordView(NamedTuple):
    """A consumed message as a plain value (clients whose messages are not :class:`Record` s)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Batch:
    """One poll: the message values, which partition each came from, and the offsets.

    Built once per poll by the transport, so that the worker makes no per-message
    calls into the client: it decodes ``values``, maps ``part_of`` to owners with one
    numpy index, commits ``next_offsets``, and asks for the full :meth:`record` only
    of the messages it dead-letters or alerts on.
    """

    values: list[bytes | None]
    partitions: list[Partition]  # each partition in the batch once
    part_of: np.ndarray  # int32 per message: its index into ``partitions``
    next_offsets: dict[Partition, int]  # the offset after the last message of each partition
    record_at: Callable[[int], Record]

    def __len__(self) -> int:
        return len(self.values)

    def record(self, i: int) -> Record:
        """The ``i``-th message with its topic, partition, offset and key."""
        return self.record_at(i)

    def counts(self) -> dict[Partition, int]:
        """Messages per partition."""
        n = np.bincount(self.part_of, minlength=len(self.partitions))
        return {tp: int(c) for tp, c in zip(self.partitions, n.tolist(), strict=True)}

    def partition_index(self, index_of: dict[Partition, int]) -> np.ndarray:
        """For every message, ``index_of`` its partition (-1 when absent)."""
        codes = np.array([index_of.get(tp, -1) for tp in self.partitions], dtype=np.int32)
        return codes[self.part_of] if len(self.part_of) else np.zeros(0, dtype=np.int32)

    @classmethod
    def empty(cls) -> Batch:
        """A poll that brought nothing."""
        return cls([], [], np.zeros(0, dtype=np.int32), {}, _no_record)


def _no_record(i: int) -> Record:
    raise IndexError(i)


class Transport(Protocol):
    """A group consumer over the input topics plus a producer, as the worker uses them."""

    def poll(self, timeout_ms: int) -> Batch:
        """One batch of records across the assigned partitions (may be empty)."""

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit ``next offset to read`` per partition, synchronously."""

    def produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None, *,
                on_error: Callable[[Exception], None] | None = None,
                on_success: Callable[[Delivery], None] | None = None) -> None:
        """Queue a record; its delivery report goes to ``on_error`` or ``on_success``."""

    def produce_many(self, topic: str, records: list[tuple[bytes, bytes]], *,
                     on_error: Callable[[bytes, bytes, Exception], None]) -> None:
        """Queue many ``(key, value)`` records at once; each refused one goes to
        ``on_error(key, value, exc)`` (no report for the delivered: the cheap path for
        a record per reading)."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record has its delivery report (TransportError on timeout)."""

    def lag(self) -> dict[Partition, int]:
        """Messages behind the high watermark per assigned partition, where known."""

    def broker_reachable(self) -> bool:
        """True while a connection to at least one broker is up."""

    def partition_count(self, topic: str) -> int:
        """Partitions of a topic (1 if unknown)."""

    def read_alert_keys(self, topic: str, from_offsets: dict[int, int], timeout: float = 30.0) -> set[tuple[str, float, str, str]]:
        """``(sensor_id, ts, event, kind)`` of the alerts published from these offsets to the end."""

    def close(self) -> None:
        """Leave the group and close the clients."""
