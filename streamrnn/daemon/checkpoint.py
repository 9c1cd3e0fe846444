"""The durability rule, in one place: acknowledged records, then saved state, then commits.

At every checkpoint the :class:`CheckpointCoordinator`

1. flushes the producer, so every alert and dead letter produced so far is
   acknowledged by the broker; records it refused are sent again once, and while any
   is still refused the checkpoint is postponed (state unsaved, offsets uncommitted),
2. saves, for each partition that received readings, the rows of its sensors that
   changed since its last save (and the sensors evicted since), with the offset the
   state reflects and how far the alerts topic had been written,
3. and only then commits those offsets.

A crash at any point therefore replays readings into a state that has not seen them
(or drops them as already seen). In the worker's loop (:meth:`CheckpointCoordinator.tick`)
step 2 runs beside scoring, on the coordinator's own thread: the rows are copied out of
the bank when the checkpoint starts, and step 3 happens at the first tick after the
store has them, so a save as long as several batches never holds scoring up. It also owns the rest of a partition's life on this
worker: on assignment its saved state is restored before any of its readings is
scored, and the alerts published after that save are read back so that a replay does
not publish them twice; on revocation its state is saved and forgotten.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from ..core import AlertEvent, Detector
from ..core.state import CapacityError
from .metrics import WorkerMetrics
from .stores.base import CheckpointError, PartitionState, StateStore
from .transport.base import Partition, Transport, TransportError

__all__ = ["CheckpointCoordinator", "CheckpointOutcome", "Outbox"]

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 10.0


class CheckpointOutcome(str, Enum):
    """How a checkpoint ended."""

    SAVED = "saved"
    NOTHING_NEW = "nothing_new"
    FLUSH_FAILED = "flush_failed"  # records not acknowledged: the broker is unreachable or refusing
    SAVE_FAILED = "save_failed"  # the store could not write

    def __bool__(self) -> bool:
        return self in (CheckpointOutcome.SAVED, CheckpointOutcome.NOTHING_NEW)


class Outbox(Protocol):
    """What the coordinator needs of the records the worker sends out (the publisher)."""

    def alerts_position(self) -> dict[int, int]:
        """Per alerts-topic partition, the offset after the last acknowledged alert."""

    def refused(self) -> int:
        """How many records the broker refused and have not been sent again."""

    def redeliver(self) -> int:
        """Send every refused record again; returns how many."""


@dataclass
class _Save:
    """A save handed to the store and not finished yet, with what it took from the books."""

    future: Future[tuple[int, float]]  # bytes written, seconds the store took
    offsets: dict[Partition, int]  # what to commit once it lands
    changed: dict[Partition, np.ndarray]  # slots it saves: filed again if it fails
    departed: dict[Partition, list[str]]  # removals it carries: likewise
    tag_keys: dict[Partition, set[int]]
    commit: bool


class CheckpointCoordinator:
    """Saves, commits, restores and forgets partition state for one worker."""

    def __init__(self, *, detector: Detector, store: StateStore, transport: Transport, alerts_topic: str,
                 outbox: Outbox, interval_seconds: float, metrics: WorkerMetrics) -> None:
        """``outbox`` says how far each alerts-topic partition is acknowledged (saved with
        the state) and which records were refused."""
        self.detector = detector
        self.store = store
        self.transport = transport
        self.alerts_topic = alerts_topic
        self.outbox = outbox
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self._part_ids: dict[Partition, int] = {}
        self._partition_at: dict[int, Partition] = {}
        self._pending: dict[Partition, int] = {}
        self._changed: dict[Partition, np.ndarray] = {}  # slots changed and not saved yet
        self._tag_keys: dict[Partition, set[int]] = {}  # tag sets a partition's saved rows may name
        self._last = time.monotonic()
        self._replayed: set[tuple[str, float, str, str]] = set()
        self._departed: dict[Partition, list[str]] = {}  # evicted sensors not yet forgotten by the store
        self._corrupt_seen = 0
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-save")
        self._inflight: _Save | None = None
        self.failing = False  # the last checkpoint failed
        self.commit_failing = False  # the last offset commit failed (the broker is not answering)
        # Stores keep sensors one by one: they are given the changed rows and told which left.
        detector.bank.tracking = True

    # -- which partition owns a sensor ------------------------------------------------
    def owner(self, tp: Partition) -> int:
        """The small integer that marks a partition's sensors in the state bank."""
        idx = self._part_ids.get(tp)
        if idx is None:
            idx = self._part_ids[tp] = len(self._part_ids)
            self._partition_at[idx] = tp
        return idx

    def partition_of(self, owner: int) -> Partition | None:
        """The partition marked by ``owner`` (None for a mark no partition has)."""
        return self._partition_at.get(owner)

    def _owned(self, partitions: list[Partition]) -> dict[Partition, tuple[list[str], np.ndarray]]:
        """The ids and slots of the sensors each partition owns (one pass over the bank:
        for revocation, never per checkpoint)."""
        bank = self.detector.bank
        ids, slots = bank.held()
        ids_arr = np.array(ids, dtype=object)
        owner = bank.arrays["owner"][slots]
        out = {}
        for tp in partitions:
            mask = owner == self.owner(tp)
            out[tp] = ids_arr[mask].tolist(), slots[mask]
        return out

    # -- offsets waiting for a checkpoint ----------------------------------------------
    def track(self, next_offsets: dict[Partition, int]) -> None:
        """Remember a scored batch's offsets: they are committed at the next checkpoint."""
        self._pending.update(next_offsets)

    @property
    def pending(self) -> dict[Partition, int]:
        """Offsets scored but not committed yet, per partition."""
        return dict(self._pending)

    def due(self) -> bool:
        """Whether a checkpoint is due: offsets wait and the interval has passed."""
        return bool(self._pending) and time.monotonic() - self._last >= self.interval_seconds

    # -- the rule -----------------------------------------------------------------------
    def checkpoint(self, partitions: list[Partition] | None = None, *, commit: bool = True) -> CheckpointOutcome:
        """Flush, save the state of the partitions with new readings (default all), then
        commit their offsets (unless ``commit`` is False), waiting for the save (and for
        one already under way). Truthy when nothing is left unsaved.

        A failed checkpoint is tried again when the next is due (one interval later),
        with everything since the last good one."""
        self._finish(block=True, commit=commit)
        outcome = self._start(partitions, commit)
        if outcome is None:
            outcome = self._finish(block=True, commit=commit)
            assert outcome is not None
        return outcome

    def tick(self) -> CheckpointOutcome | None:
        """The worker loop's turn, never waiting on the store: finish a save that has
        landed (commit its offsets), and start the next one when it is due and none is
        under way. Returns how a checkpoint ended in this call, if one did."""
        ended = self._finish(block=False, commit=True)
        if self._inflight is None and self.due():
            started = self._start(None, True)
            if started is not None:
                ended = started
        return ended

    def close(self) -> None:
        """Wait for a save under way (its offsets are left uncommitted) and stop the saving thread."""
        self._finish(block=True, commit=False)
        self._saver.shutdown(wait=True)

    def _record(self, outcome: CheckpointOutcome) -> CheckpointOutcome:
        self.metrics.checkpoints.labels(result=outcome.value).inc()
        self.failing = not outcome
        self.metrics.checkpoint_failing.set(0 if outcome else 1)
        if not outcome:
            self._last = time.monotonic()
        return outcome

    def _start(self, partitions: list[Partition] | None, commit: bool) -> CheckpointOutcome | None:
        """Steps 1 and 2 up to handing the rows to the store; None once a save is under way."""
        todo = {tp: off for tp, off in self._pending.items() if partitions is None or tp in partitions}
        if not todo:
            return self._record(CheckpointOutcome.NOTHING_NEW)
        try:
            self.transport.flush(_FLUSH_TIMEOUT_S)
        except TransportError as e:
            # Alerts not acknowledged yet: keep the old state so a crash replays them.
            log.warning("producer flush failed, checkpoint postponed: %s", e)
            return self._record(CheckpointOutcome.FLUSH_FAILED)
        if self.outbox.refused():
            sent = self.outbox.redeliver()
            try:
                self.transport.flush(_FLUSH_TIMEOUT_S)
            except TransportError as e:
                log.warning("producer flush failed, checkpoint postponed: %s", e)
                return self._record(CheckpointOutcome.FLUSH_FAILED)
            still = self.outbox.refused()
            if still:
                log.warning("%d of %d refused records refused again, checkpoint postponed", still, sent)
                return self._record(CheckpointOutcome.FLUSH_FAILED)
        t0 = time.perf_counter()
        bank = self.detector.bank
        meta = {"model_version": self.detector.model_version,
                "alerts_next": {str(p): o for p, o in self.outbox.alerts_position().items()}}
        self._note_evictions()
        self._note_changes()
        states = {}
        tag_keys = {}
        changed, departed = {}, {}
        tagged = len(self.detector.tags) > 1
        for tp in todo:
            slots = self._changed.pop(tp, np.zeros(0, dtype=np.int64))
            slots = slots[(bank.last_seen[slots] > 0) & (bank.rows["owner"][slots] == self.owner(tp))]
            changed[tp] = slots
            departed[tp] = self._departed.pop(tp, [])
            part_meta = meta
            if tagged:  # the tags the partition's saved rows name, these included
                tag_keys[tp] = self._tag_keys.get(tp, set()) | set(np.unique(bank.rows["tag_set"][slots]).tolist())
                part_meta = {**meta, "tags": self.detector.tags.subset(sorted(tag_keys[tp]))}
            ids = [bank.sensor_at(s) or "" for s in slots.tolist()]
            # pack copies the rows: the loop goes on changing the bank while the store writes
            states[tp] = PartitionState(ids, bank.pack(slots), todo[tp], part_meta, removed=departed[tp])
        self._inflight = _Save(self._saver.submit(self._save, states, t0), todo, changed, departed, tag_keys, commit)
        self._last = time.monotonic()
        return None

    def _save(self, states: dict[Partition, PartitionState], started: float) -> tuple[int, float]:
        """On the saving thread: the store's save, and how long the checkpoint took from its start."""
        size = self.store.save(states)
        return size, time.perf_counter() - started

    def _finish(self, *, block: bool, commit: bool) -> CheckpointOutcome | None:
        """Step 3 for the save under way, once it has landed (at once if ``block``); its
        offsets are committed if both it and ``commit`` allow. None if nothing ended."""
        save = self._inflight
        if save is None or not (block or save.future.done()):
            return None
        self._inflight = None
        try:
            size, seconds = save.future.result()
        except (OSError, TransportError) as e:
            log.error("saving state failed, offsets not committed (tried again in %.0fs): %s", self.interval_seconds, e)
            for tp, slots in save.changed.items():  # still unsaved: the next save carries them
                old = self._changed.get(tp)
                self._changed[tp] = slots if old is None else np.union1d(old, slots)
            for tp, sids in save.departed.items():
                if sids:
                    self._departed[tp] = sids + self._departed.get(tp, [])
            return self._record(CheckpointOutcome.SAVE_FAILED)
        self._tag_keys.update(save.tag_keys)
        self.metrics.checkpoint_seconds.observe(seconds)
        self.metrics.checkpoint_bytes.set(size)
        self.metrics.last_checkpoint.set(time.time())
        if commit and save.commit and not self._commit(save.offsets):
            return self._record(CheckpointOutcome.SAVED)  # the offsets stay pending: the next checkpoint commits them
        if commit and save.commit:
            for tp, off in save.offsets.items():
                if self._pending.get(tp) == off:
                    del self._pending[tp]
        return self._record(CheckpointOutcome.SAVED)

    def _note_evictions(self) -> None:
        """File the sensors evicted since the last checkpoint under their partitions."""
        for sid, owner in self.detector.bank.take_evicted():
            tp = self.partition_of(owner)
            if tp is not None:
                self._departed.setdefault(tp, []).append(sid)

    def _note_changes(self) -> None:
        """File the rows changed since the last checkpoint under their partitions (they
        stay filed until their partition is saved)."""
        bank = self.detector.bank
        slots = bank.take_changed()
        if not len(slots):
            return
        owner = bank.rows["owner"][slots]
        by_owner = np.argsort(owner, kind="stable")
        slots, owner = slots[by_owner], owner[by_owner]
        cuts = np.flatnonzero(owner[1:] != owner[:-1]) + 1
        for part, o in zip(np.split(slots, cuts), owner[np.r_[0, cuts]].tolist(), strict=True):
            tp = self._partition_at.get(o)
            if tp is not None:
                old = self._changed.get(tp)
                self._changed[tp] = part if old is None else np.union1d(old, part)

    def _commit(self, offsets: dict[Partition, int]) -> bool:
        try:
            self.transport.commit(offsets)
        except TransportError as e:
            # The saved state is ahead of the committed offsets: the readings in between
            # are replayed and recognised as already seen, so nothing is scored twice.
            self.metrics.offset_commits.labels(result="failed").inc()
            log.warning("offset commit failed (will retry at the next checkpoint): %s", e)
            self.commit_failing = True
            return False
        self.metrics.offset_commits.labels(result="ok").inc()
        self.commit_failing = False
        return True

    # -- partitions arriving and leaving -------------------------------------------------
    def assigned(self, partitions: list[Partition]) -> None:
        """Load the saved state of newly assigned partitions before any of their readings."""
        # The store does one thing at a time; inside a rebalance the offsets wait for the next checkpoint.
        self._finish(block=True, commit=False)
        t0 = time.perf_counter()
        try:
            states = self.store.load(partitions)
        except (CheckpointError, OSError, TransportError) as e:
            log.error("state of %s unusable, those sensors start fresh: %s", partitions, e)
            if isinstance(e, CheckpointError):
                self.metrics.state_corrupt.inc(len(partitions))
            return
        finally:
            corrupt = self.store.corrupt_total
            if corrupt > self._corrupt_seen:
                self.metrics.state_corrupt.inc(corrupt - self._corrupt_seen)
                self._corrupt_seen = corrupt
        bank = self.detector.bank
        restored = 0
        models = set()
        alerts_from: dict[int, int] = {}
        for tp, st in states.items():
            try:
                slots = bank.unpack(st.ids, st.rows)
            except CapacityError as e:
                log.error("state of %s/%d does not fit the bank (%s): its sensors start fresh", tp[0], tp[1], e)
                continue
            tags = st.meta.get("tags")
            self.detector.adopt(slots, owner=self.owner(tp), tags=tags if isinstance(tags, dict) else None)
            if isinstance(tags, dict):
                self._tag_keys[tp] = {int(k) for k in tags}
            if st.rows.dtype != bank.row_dtype:  # saved by another version: the next save rewrites them all
                bank.mark_changed(slots)
            restored += len(slots)
            models.add(st.meta.get("model_version"))
            for p, off in st.meta.get("alerts_next", {}).items():
                alerts_from[int(p)] = min(off, alerts_from.get(int(p), off))
            # Consumption resumes from the committed offset, which is never ahead of
            # the saved state; readings the state has already seen are dropped as stale.
        self.metrics.active_sensors.set(self.detector.active_sensors)
        if states:
            log.info("restored %d sensors of %d partitions in %.2fs", restored, len(states), time.perf_counter() - t0)
            self.metrics.restore_seconds.observe(time.perf_counter() - t0)
        if models - {self.detector.model_version, None}:
            # Hidden states belong to the model that made them: re-warm for this one.
            warmed = self.detector.swap_model(self.detector.model, self.detector.model_version)
            log.info("state was made by model(s) %s: re-warmed %d sensors for %s", sorted(m for m in models if m), warmed,
                     self.detector.model_version)
        if alerts_from:
            try:
                self._replayed |= self.transport.read_alert_keys(self.alerts_topic, alerts_from)
            except TransportError as e:
                log.warning("could not read back recent alerts (%s): a replay may publish some twice", e)

    def revoked(self, partitions: list[Partition]) -> None:
        """Save the leaving partitions' state (no commit) and forget their sensors."""
        # kafka-python runs this on its I/O thread, where a blocking commit is refused
        # (and the group is rebalancing anyway): save the state only. The next owner
        # restores it and drops the replayed readings it already reflects.
        self.checkpoint(partitions, commit=False)
        self._note_changes()
        for tp, (ids, _) in self._owned(partitions).items():
            self._pending.pop(tp, None)
            self._departed.pop(tp, None)
            self._changed.pop(tp, None)
            self._tag_keys.pop(tp, None)
            self.detector.bank.remove(ids)  # its state now belongs to whoever gets the partition
        self.metrics.active_sensors.set(self.detector.active_sensors)

    # -- replays --------------------------------------------------------------------------
    def replayed(self, ev: AlertEvent) -> bool:
        """True (once) for an event published before a crash and recomputed from the replay."""
        key = (ev.sensor_id, ev.ts, ev.event.value, ev.kind.value)
        if key in self._replayed:
            self._replayed.discard(key)
            self.metrics.alerts_deduplicated.inc()
            return True
        return False
