"""The state bank: every sensor's state as rows of preallocated column arrays.

Each component of the detector (features, forecaster, scorer, alerter) declares the
per-sensor columns it needs; the bank allocates them, grows them by doubling as new
sensors appear, evicts the least recently seen sensor beyond ``max_sensors`` and
snapshots/restores them all at once. Keeping state as a struct of arrays is what lets
one wave of a batch gather and scatter all its sensors with one fancy index, and what
lets a checkpoint pack a partition's sensors into rows of one structured dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters

from .parameters import PARAMS

__all__ = ["BankParams", "Column", "StateBank", "CapacityError"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class BankParams:
    """How many sensors the state bank holds and how much recent history each keeps."""

    max_sensors: int = Field(default=100000, ge=1, le=100_000_000, description="Most sensors held; the least recently seen is evicted beyond it.")
    initial_capacity: int = Field(default=1024, ge=1, description="Sensors preallocated at start; the bank doubles as sensors appear.")
    history_length: int = Field(default=128, ge=0, le=100_000, description="Recent readings kept per sensor (re-warm after a model swap, retraining data); 0 disables retraining.")


@dataclass(frozen=True)
class Column:
    """A per-sensor field: name, dtype, trailing shape and the value of a fresh sensor."""

    name: str
    dtype: str
    fill: float = 0.0
    shape: tuple[int, ...] = ()


class CapacityError(RuntimeError):
    """More distinct sensors in one batch than ``max_sensors`` allows."""


class StateBank:
    """Per-sensor state rows indexed by slot, with sensor-id lookup and LRU eviction."""

    def __init__(self, columns: Iterable[Column], *, max_sensors: int, initial_capacity: int) -> None:
        self.max_sensors = int(max_sensors)
        self.columns: dict[str, Column] = {}
        for c in columns:
            if c.name in self.columns:
                raise ValueError(f"duplicate state column {c.name!r}")
            self.columns[c.name] = c
        self.capacity = max(1, min(int(initial_capacity), self.max_sensors))
        self.arrays: dict[str, np.ndarray] = {
            c.name: np.full((self.capacity, *c.shape), c.fill, dtype=c.dtype) for c in self.columns.values()
        }
        self._last_seen = np.zeros(self.capacity, dtype=np.int64)
        self._slot_of: dict[str, int] = {}
        self._sensor_at: list[str | None] = [None] * self.capacity
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))
        self._tick = 0
        self.evicted_total = 0

    # -- lookup ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, sensor_id: object) -> bool:
        return sensor_id in self._slot_of

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def held(self) -> tuple[list[str], np.ndarray]:
        """Ids of all sensors held and their slots, in matching order."""
        ids = list(self._slot_of)
        return ids, np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(ids))

    def row(self, sensor_id: str) -> dict[str, np.ndarray]:
        """A copy of one sensor's state, column by column (for inspection and tests)."""
        s = self._slot_of[sensor_id]
        return {k: a[s].copy() for k, a in self.arrays.items()}

    # -- assignment -----------------------------------------------------------
    def assign(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """Slots for a batch of sensor ids, creating (and if needed evicting) rows.

        Every sensor in the batch is marked as seen now, so eviction only ever takes
        sensors absent from this batch.
        """
        self._tick += 1
        slot_of = self._slot_of
        slots = np.empty(len(sensor_ids), dtype=np.int64)
        new: dict[str, list[int]] = {}
        for i, sid in enumerate(sensor_ids):
            s = slot_of.get(sid, -1)
            slots[i] = s
            if s < 0:
                new.setdefault(sid, []).append(i)
        known = slots >= 0
        self._last_seen[slots[known]] = self._tick
        if new:
            self._make_room(len(new))
            for sid, positions in new.items():
                s = self._free.pop()
                slot_of[sid] = s
                self._sensor_at[s] = sid
                self._reset(s)
                self._last_seen[s] = self._tick
                slots[positions] = s
        return slots

    def _make_room(self, n_new: int) -> None:
        need = len(self._slot_of) + n_new
        if need > self.max_sensors:
            # Sensors seen in this batch carry the current tick; only older ones may go.
            held = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
            stale = held[self._last_seen[held] < self._tick]
            n_evict = need - self.max_sensors
            if n_evict > len(stale):
                raise CapacityError(f"{need - len(stale)} sensors in one batch exceed max_sensors={self.max_sensors}")
            victims = stale[np.argpartition(self._last_seen[stale], n_evict - 1)[:n_evict]]
            for s in victims.tolist():
                self._release(int(s))
            self.evicted_total += n_evict
        if len(self._free) < n_new:
            self._grow(len(self._slot_of) + n_new)

    def _grow(self, at_least: int) -> None:
        cap = self.capacity
        new_cap = cap
        while new_cap < at_least:
            new_cap *= 2
        new_cap = min(new_cap, self.max_sensors)
        for name, c in self.columns.items():
            a = np.full((new_cap, *c.shape), c.fill, dtype=c.dtype)
            a[:cap] = self.arrays[name]
            self.arrays[name] = a
        last = np.zeros(new_cap, dtype=np.int64)
        last[:cap] = self._last_seen
        self._last_seen = last
        self._sensor_at.extend([None] * (new_cap - cap))
        self._free.extend(range(new_cap - 1, cap - 1, -1))
        self.capacity = new_cap

    def _reset(self, s: int) -> None:
        for name, c in self.columns.items():
            self.arrays[name][s] = c.fill

    def _release(self, s: int) -> None:
        sid = self._sensor_at[s]
        if sid is not None:
            del self._slot_of[sid]
        self._sensor_at[s] = None
        self._free.append(s)

    def remove(self, sensor_ids: Iterable[str]) -> None:
        """Forget sensors (e.g. when their partition moves to another worker)."""
        for sid in sensor_ids:
            s = self._slot_of.get(sid)
            if s is not None:
                self._release(s)

    @property
    def tick(self) -> int:
        """Batch counter: every :meth:`assign` call advances it."""
        return self._tick

    def touched_since(self, tick: int, slots: np.ndarray) -> np.ndarray:
        """Which of ``slots`` were seen in a batch after ``tick``."""
        return self._last_seen[slots] > tick

    @property
    def row_dtype(self) -> np.dtype:
        """One sensor's whole state as a numpy structured record (for rows on the wire)."""
        return np.dtype([(c.name, c.dtype, c.shape) for c in self.columns.values()])

    def pack(self, slots: np.ndarray) -> np.ndarray:
        """The rows of ``slots`` as a structured array of :attr:`row_dtype`."""
        out = np.empty(len(slots), dtype=self.row_dtype)
        for name, a in self.arrays.items():
            out[name] = a[slots]
        return out

    def unpack(self, sensor_ids: list[str], rows: np.ndarray) -> np.ndarray:
        """Load rows (structured, any subset of columns) for these sensors; returns their slots.

        Columns the rows lack keep their fresh value, so state from an older version
        with fewer columns still loads.
        """
        slots = self.assign(sensor_ids) if sensor_ids else np.zeros(0, dtype=np.int64)
        for name in rows.dtype.names or ():
            if name in self.arrays and len(slots):
                self.arrays[name][slots] = rows[name]
        return slots
