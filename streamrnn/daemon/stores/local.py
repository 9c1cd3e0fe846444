"""Partition state in a local directory: one node.

One ``.npz`` file per partition in ``<state.dir>/partitions``, written atomically
(temporary file, fsync, rename) with a sha256 sidecar; each save holds a whole
partition.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from ...lifecycle.artifacts import ArtifactError, read_checksummed, write_checksummed
from ..transport.base import Partition
from .base import PartitionState

__all__ = ["LocalStateStore"]

log = logging.getLogger(__name__)


class LocalStateStore:
    """Per-partition ``.npz`` files in a directory (each save holds a full partition)."""

    incremental = False

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "partitions"
        self.corrupt_total = 0

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
            write_checksummed(self.path(tp), data)
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
                data, _ = read_checksummed(path)
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    meta = json.loads(z["meta"].tobytes().decode())
                    out[tp] = PartitionState([str(s) for s in z["ids"].tolist()], z["rows"], int(meta.pop("offset")), meta)
            except (OSError, ValueError, KeyError, IndexError, TypeError, ArtifactError) as e:
                self.corrupt_total += 1
                log.error("state of %s/%d unusable (%s): its sensors start fresh", tp[0], tp[1], e)
        return out

    def close(self) -> None:
        """Nothing to release."""
