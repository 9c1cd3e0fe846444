"""Where a partition's sensor state is kept between runs, and on which terms.

A sensor's state belongs to the Kafka partition its readings arrive on. The checkpoint
coordinator saves each partition's state together with the offset it reflects and
commits that offset only afterwards; on assignment it restores the partition's state
first. Backends implement :class:`StateStore`: :mod:`.local` (files in a directory,
one node) and :mod:`.changelog` (a compacted Kafka topic, several nodes).
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
    """The state of one partition's sensors and the offset it reflects."""

    ids: list[str]
    rows: np.ndarray
    offset: int
    meta: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    """Sensors evicted since the last save: a store that keeps sensors one by one forgets them."""


class StateStore(Protocol):
    """Where partition state is kept."""

    incremental: bool
    """True when a save holds only the sensors changed since the last one (else whole partitions)."""

    corrupt_total: int
    """Saved partitions or sensor records found unusable by :meth:`load` so far (they start fresh)."""

    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Save durably; returns the bytes written."""

    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]:
        """The saved state of those partitions that have one; unusable saved state is
        logged, counted in :attr:`corrupt_total` and left out (its sensors start fresh)."""

    def close(self) -> None:
        """Release resources."""
