"""The state bank: every sensor's state as one row of a structured array.

Each component of the detector (features, forecaster, scorer, alerter) declares the
per-sensor fields it needs as :class:`Column` s; the bank lays them out as one numpy
record per sensor, grows the array by doubling as new sensors appear, evicts the least
recently seen sensor beyond ``max_sensors``, remembers which rows changed since a
checkpoint last asked (:meth:`take_changed`) and hands rows to checkpoints as they are.

One record per sensor, rather than one array per field, because the compiled scoring
pass visits the readings of a batch in per-sensor order and touches dozens of fields
of the same sensor for each: they sit together in memory. A column of all sensors is
still a strided view (``bank["count"]``) for the few vectorised uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters

from .parameters import PARAMS

__all__ = ["BankParams", "CapacityError", "Column", "StateBank"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class BankParams:
    """How many sensors the state bank holds and how much recent history each keeps."""

    max_sensors: int = Field(default=100000, ge=1, le=100_000_000, description="Most sensors held; the least recently seen is evicted beyond it.")
    initial_capacity: int = Field(default=1024, ge=1, description="Rows allocated at start if max_sensors rows cannot be reserved as address space (they normally are: memory then grows with the sensors held); the bank doubles from there.")
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

    def __init__(self, columns: Iterable[Column], *, max_sensors: int, initial_capacity: int,
                 group_column: str | None = None) -> None:
        """``group_column`` names the column (e.g. the owning partition) whose value is
        recorded with each evicted sensor in :attr:`evicted` while :attr:`tracking`."""
        self.max_sensors = int(max_sensors)
        self.columns: dict[str, Column] = {}
        for c in columns:
            if c.name in self.columns:
                raise ValueError(f"duplicate state column {c.name!r}")
            self.columns[c.name] = c
        # Aligned records, scalars first, then arrays by size: the fields every reading
        # touches share the row's first cache lines. Empty arrays (evidence that is off)
        # go last, so no two fields share an offset.
        def place(c: Column) -> tuple[int, int]:
            size = int(np.prod(c.shape)) * np.dtype(c.dtype).itemsize
            return (0 if not c.shape else 2 if size == 0 else 1), size

        layout = sorted(self.columns.values(), key=place)
        self.row_dtype = np.dtype([(c.name, c.dtype, c.shape) for c in layout], align=True)
        self.fresh = np.zeros((), dtype=self.row_dtype)
        for c in self.columns.values():
            self.fresh[c.name] = c.fill
        self.fresh_bytes = np.frombuffer(self.fresh.tobytes(), dtype=np.uint8).copy()
        self.rows = self._reserve(max(1, min(int(initial_capacity), self.max_sensors)))
        self.last_seen = np.zeros(len(self.rows), dtype=np.int64)
        self._slot_of: dict[str, int] = {}
        self._sensor_at: list[str | None] = []  # grows with the slots ever used
        self._released: list[int] = []  # slots given back by eviction or removal
        self._tick = 0
        self.evicted_total = 0
        self.group_column = group_column
        # A caller that checkpoints turns this on: changed rows and evicted sensors are
        # then recorded until it takes them (offline scoring records nothing).
        self.tracking = False
        self.evicted: list[tuple[str, int]] = []  # (sensor id, group) evicted since the caller last took them
        # Slots of each batch (and of other changes) since the last take_changed: a
        # checkpoint costs what changed, never a pass over every sensor held.
        self._changed: list[np.ndarray] = []

    def _reserve(self, fallback: int) -> np.ndarray:
        """Rows for every sensor the bank may hold, as address space only.

        The operating system provides a page when a row in it is first written, so
        memory grows with the sensors actually held and growing never copies. Where
        ``max_sensors`` rows are more than the address space can be promised, start
        with ``fallback`` rows and double them as sensors appear.
        """
        try:
            return np.empty(self.max_sensors, dtype=self.row_dtype)
        except MemoryError:
            return np.empty(fallback, dtype=self.row_dtype)

    def raw(self) -> np.ndarray:
        """The rows as bytes ``[capacity, row size]`` (a view: writes reach the rows)."""
        return self.rows.view(np.uint8).reshape(len(self.rows), self.row_dtype.itemsize)

    @property
    def capacity(self) -> int:
        """Rows allocated (reserved address space; pages are provided as rows are used)."""
        return len(self.rows)

    # -- lookup ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, sensor_id: object) -> bool:
        return sensor_id in self._slot_of

    def __getitem__(self, name: str) -> np.ndarray:
        return self.rows[name]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every column as a view over all slots (writes go to the rows)."""
        return {name: self.rows[name] for name in self.columns}

    def held(self) -> tuple[list[str], np.ndarray]:
        """Ids of all sensors held and their slots, in matching order."""
        ids = list(self._slot_of)
        return ids, np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(ids))

    def row(self, sensor_id: str) -> dict[str, np.ndarray]:
        """A copy of one sensor's state, field by field (for inspection and tests)."""
        r = self.rows[self._slot_of[sensor_id]]
        return {k: np.array(r[k]) for k in self.columns}

    # -- assignment -----------------------------------------------------------
    def assign(self, sensor_ids: Sequence[str], *, changes: bool = True) -> np.ndarray:
        """Slots for a batch of sensor ids, creating (and if needed evicting) rows.

        Every sensor in the batch is marked as seen now, so eviction only ever takes
        sensors absent from this batch. Their rows count as changed (see
        :meth:`take_changed`) unless ``changes`` is False (rows being restored as saved).
        """
        self._tick += 1
        slot_of = self._slot_of
        unique = dict.fromkeys(sensor_ids)  # first appearance order, one hash per reading
        new = [sid for sid in unique if sid not in slot_of]
        if new:
            known = [slot_of[sid] for sid in unique if sid in slot_of]
            self.last_seen[known] = self._tick  # so that making room never evicts them
            fresh = self._take_slots(len(new))
            self.rows.view(np.uint8).reshape(len(self.rows), -1)[fresh] = self.fresh_bytes
            for sid, s in zip(new, fresh.tolist(), strict=True):
                slot_of[sid] = s
                self._sensor_at[s] = sid
        for sid in unique:
            unique[sid] = slot_of[sid]
        slots = np.fromiter(map(unique.__getitem__, sensor_ids), dtype=np.int64, count=len(sensor_ids))
        self.last_seen[slots] = self._tick
        if changes and self.tracking:
            self._changed.append(slots)
        return slots

    def mark_changed(self, slots: np.ndarray) -> None:
        """Count these rows as changed (a change made outside :meth:`assign`)."""
        if len(slots) and self.tracking:
            self._changed.append(np.asarray(slots, dtype=np.int64))

    def take_changed(self) -> np.ndarray:
        """The held slots changed since the last call (while :attr:`tracking`), each once, ascending.

        A slot released and reused since counts for its new sensor only.
        """
        if not self._changed:
            return np.zeros(0, dtype=np.int64)
        slots = np.unique(np.concatenate(self._changed))
        self._changed = []
        return slots[self.last_seen[slots] > 0]

    def _take_slots(self, n_new: int) -> np.ndarray:
        """``n_new`` free slots: released ones first, then never used ones (evicting
        the least recently seen sensors beyond ``max_sensors``)."""
        need = len(self._slot_of) + n_new
        if need > self.max_sensors:
            # Sensors seen in this batch carry the current tick; only older ones may go.
            held = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
            stale = held[self.last_seen[held] < self._tick]
            n_evict = need - self.max_sensors
            if n_evict > len(stale):
                raise CapacityError(f"{need - len(stale)} sensors in one batch exceed max_sensors={self.max_sensors}")
            victims = stale[np.argpartition(self.last_seen[stale], n_evict - 1)[:n_evict]]
            if self.tracking:
                group = self.rows[self.group_column][victims] if self.group_column else np.full(len(victims), -1)
                self.evicted += [(self._sensor_at[s] or "", g) for s, g in zip(victims.tolist(), group.tolist(), strict=True)]
            for s in victims.tolist():
                self._release(int(s))
            self.evicted_total += n_evict
        reuse = min(n_new, len(self._released))
        taken = [self._released.pop() for _ in range(reuse)]
        first = len(self._sensor_at)
        extra = n_new - reuse
        if first + extra > len(self.rows):
            self._grow(first + extra)
        self._sensor_at.extend([None] * extra)
        return np.array(taken + list(range(first, first + extra)), dtype=np.int64)

    def _grow(self, at_least: int) -> None:
        cap = len(self.rows)
        new_cap = cap
        while new_cap < at_least:
            new_cap *= 2
        new_cap = min(new_cap, self.max_sensors)
        rows = np.empty(new_cap, dtype=self.row_dtype)
        rows[:cap] = self.rows
        self.rows = rows
        last = np.zeros(new_cap, dtype=np.int64)
        last[:cap] = self.last_seen
        self.last_seen = last

    def _release(self, s: int) -> None:
        sid = self._sensor_at[s]
        if sid is not None:
            del self._slot_of[sid]
        self._sensor_at[s] = None
        self._released.append(s)
        self.last_seen[s] = 0  # not held: last_seen > 0 marks the held slots

    def remove(self, sensor_ids: Iterable[str]) -> None:
        """Forget sensors (e.g. when their partition moves to another worker)."""
        for sid in sensor_ids:
            s = self._slot_of.get(sid)
            if s is not None:
                self._release(s)

    @property
    def used(self) -> int:
        """Slots ever used: every held slot is below it (and has ``last_seen > 0``)."""
        return len(self._sensor_at)

    def sensor_at(self, slot: int) -> str | None:
        """The sensor held in ``slot``, if any."""
        return self._sensor_at[slot]

    def take_evicted(self) -> list[tuple[str, int]]:
        """The ``(sensor id, group)`` pairs evicted since the last call."""
        out, self.evicted = self.evicted, []
        return out

    @property
    def tick(self) -> int:
        """Batch counter: every :meth:`assign` call advances it."""
        return self._tick

    def pack(self, slots: np.ndarray) -> np.ndarray:
        """A copy of the rows of ``slots`` (records of :attr:`row_dtype`)."""
        return self.rows[slots]

    def unpack(self, sensor_ids: list[str], rows: np.ndarray) -> np.ndarray:
        """Load rows (structured, any subset of fields) for these sensors; returns their slots.

        Fields the rows lack keep their fresh value, so state from an older version
        with fewer fields still loads. A field is taken when its shape matches and its
        type is the same or both are floating point; an integer field of another width
        is fixed point at another scale (as the kept pattern windows once were), so it
        starts fresh rather than wrap.
        """
        slots = self.assign(sensor_ids, changes=False) if sensor_ids else np.zeros(0, dtype=np.int64)
        if not len(slots):
            return slots
        if rows.dtype == self.row_dtype:
            self.rows[slots] = rows
            return slots
        for name in rows.dtype.names or ():
            c = self.columns.get(name)
            if c is None or rows.dtype[name].shape != c.shape:
                continue
            have, want = rows.dtype[name].base, np.dtype(c.dtype)
            if have == want or (have.kind == want.kind == "f"):
                self.rows[name][slots] = rows[name]
        return slots
