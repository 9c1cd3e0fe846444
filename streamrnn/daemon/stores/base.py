"""Where a partition's sensor state is kept between runs, and on which terms.

A sensor's state belongs to the Kafka partition its readings arrive on. The checkpoint
coordinator saves each partition's state together with the offset it reflects and
commits that offset only afterwards; on assignment it restores the partition's state
first. A save holds only the sensors changed since the partition's last save and the
sensors removed since; the store merges them into what it keeps. Backends implement
:class:`StateStore`: :mod:`.local` (an SQLite database, one node) and :mod:`.changelog`
(a compacted Kafka topic, several nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..transport.base import Partition

__all__ = ["CheckpointError", "PartitionState", "StateStore"]


class CheckpointError(RuntimeError):
    """Saved state that cannot be read or does not match its checksum."""


@dataclass
class PartitionState:
    """Sensor rows of one partition and the offset the partition's state reflects.

    From :meth:`StateStore.load`: every saved sensor. To :meth:`StateStore.save`: the
    sensors changed since the partition's last save.
    """

    ids: list[str]
    rows: np.ndarray
    offset: int
    meta: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    """Sensors evicted since the last save: a store that keeps sensors one by one forgets them."""


class StateStore(Protocol):
    """Where partition state is kept."""

    corrupt_total: int
    """Saved partitions or sensor records found unusable by :meth:`load` so far (they start fresh)."""

    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Merge these changes into the saved state durably (each partition's rows, removals
        and offset together or not at all); returns the bytes written. Raises ``OSError``
        or ``TransportError`` when it cannot."""

    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]:
        """The saved state of those partitions that have one; unusable saved state is
        logged, counted in :attr:`corrupt_total` and left out (its sensors start fresh)."""

    def close(self) -> None:
        """Release resources."""
