"""Durable checkpoints of the detector's per-sensor state in a local directory.

A checkpoint is one ``.npz`` file of the state bank's columns plus the offsets it
reflects, written atomically (temporary file, fsync, rename) with a sha256 sidecar.
The worker commits Kafka offsets only after a checkpoint that covers them is on disk,
so a crash replays readings into a state that has not seen them yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from .core.model import atomic_write_bytes

__all__ = ["LocalCheckpointStore", "CheckpointError"]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match its checksum."""


class LocalCheckpointStore:
    """Saves and loads the state snapshot of one worker in ``state_dir``."""

    FILE = "detector-state.npz"

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / self.FILE
        self.sum_path = self.dir / (self.FILE + ".sha256")

    def save(self, snapshot: dict[str, np.ndarray], offsets: dict[tuple[str, int], int], model_version: str) -> int:
        """Write a checkpoint atomically; returns its size in bytes."""
        meta = {
            "saved_at": time.time(),
            "model_version": model_version,
            "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **snapshot)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        # Data first, then the checksum naming it: a crash in between leaves a
        # mismatch that load() reports instead of silently using a torn pair.
        atomic_write_bytes(self.path, data)
        atomic_write_bytes(self.sum_path, f"{digest}  {self.FILE}\n".encode())
        return len(data)

    def load(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The last checkpoint as ``(snapshot, meta)``, or None if there is none."""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        try:
            expected = self.sum_path.read_text().split()[0]
        except (OSError, IndexError):
            raise CheckpointError(f"{self.sum_path}: checksum missing") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"{self.path}: sha256 does not match {self.sum_path}")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            snap = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(z["meta"].tobytes().decode())
        return snap, meta
