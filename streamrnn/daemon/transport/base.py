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
from typing import Protocol

import numpy as np

__all__ = ["Batch", "Delivery", "OnAssign", "Partition", "Record", "Transport", "TransportError"]

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


@dataclass
class Batch:
    """One poll: the records, and per partition the slice of them it contributed.

    Records of one partition are contiguous and in offset order, so per-partition
    facts (message counts, the next offset to commit, which partition owns a reading)
    come from the spans instead of a Python pass over every record.
    """

    records: list[Record]
    spans: list[tuple[Partition, int, int]]  # (partition, start, end) into records

    def __len__(self) -> int:
        return len(self.records)

    def next_offsets(self) -> dict[Partition, int]:
        """The offset after the last record of each partition."""
        return {tp: self.records[end - 1].offset + 1 for tp, _, end in self.spans}

    def partition_index(self, index_of: dict[Partition, int]) -> np.ndarray:
        """For every record, ``index_of`` its partition (-1 when absent)."""
        codes = np.array([index_of.get(tp, -1) for tp, _, _ in self.spans], dtype=np.int32)
        return np.repeat(codes, [end - start for _, start, end in self.spans])


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

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record has its delivery report (TransportError on timeout)."""

    def lag(self) -> dict[Partition, int]:
        """Messages behind the high watermark per assigned partition, where known."""

    def broker_reachable(self) -> bool:
        """True while a connection to at least one broker is up."""

    def partition_count(self, topic: str) -> int:
        """Partitions of a topic (1 if unknown)."""

    def read_alert_keys(self, topic: str, from_offsets: dict[int, int], timeout: float = 30.0) -> set[tuple[str, float, str]]:
        """``(sensor_id, ts, event)`` of the alerts published from these offsets to the end."""

    def close(self) -> None:
        """Leave the group and close the clients."""
