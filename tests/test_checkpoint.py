"""The checkpoint coordinator's durability rule, with in-memory stand-ins for Kafka and
the store, and the local (SQLite) store itself.

The fakes record what the coordinator asked of them and can be told to fail; the
coordinator, the detector and its state bank under them are the real ones.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
import zlib

import numpy as np
import pytest

from streamrnn.core import AlertEvent, AlertKind, BankParams, Detector, Transition
from streamrnn.daemon.checkpoint import CheckpointCoordinator, CheckpointOutcome
from streamrnn.daemon.metrics import WorkerMetrics
from streamrnn.daemon.publisher import Publisher
from streamrnn.daemon.stores.base import PartitionState
from streamrnn.daemon.stores.local import LocalStateStore
from streamrnn.daemon.transport.base import Delivery, Partition, RecordView, TransportError
from streamrnn.ingest.messages import Reason
from streamrnn.lifecycle.artifacts import default_model_path, load_model, write_checksummed

A, B = ("sensors", 0), ("sensors", 1)


class FakeTransport:
    """What the coordinator and the publisher need from Kafka: produce, flush, commit,
    read alerts back. ``refuse`` records in a row get an error report at the flush."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.committed: dict[Partition, int] = {}
        self.fail_flush = self.fail_commit = False
        self.alert_keys: set[tuple[str, float, str, str]] = set()
        self.read_back_from: dict[int, int] | None = None
        self.refuse = 0
        self.queued: list[tuple[str, bytes, object, object]] = []
        self.stored: dict[str, list[bytes]] = {}

    def produce(self, topic, key, value, headers=None, *, on_error=None, on_success=None) -> None:
        self.queued.append((topic, value, on_error, on_success))

    def flush(self, timeout_s: float) -> None:
        self.calls.append("flush")
        if self.fail_flush:
            raise TransportError("broker unreachable")
        queued, self.queued = self.queued, []
        for topic, value, on_error, on_success in queued:
            if self.refuse > 0:
                self.refuse -= 1
                if on_error:
                    on_error(TransportError("NOT_ENOUGH_REPLICAS"))
                continue
            log = self.stored.setdefault(topic, [])
            log.append(value)
            if on_success:
                on_success(Delivery(topic, 0, len(log) - 1))

    def commit(self, offsets: dict[Partition, int]) -> None:
        self.calls.append("commit")
        if self.fail_commit:
            raise TransportError("commit refused")
        self.committed.update(offsets)

    def read_alert_keys(self, topic: str, from_offsets: dict[int, int], timeout: float = 30.0) -> set[tuple[str, float, str, str]]:
        self.read_back_from = dict(from_offsets)
        return set(self.alert_keys)


class MemoryStore:
    """Partition states kept in a dict, as a durable store would keep them."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.saved: dict[Partition, PartitionState] = {}
        self.saves: list[dict[Partition, PartitionState]] = []
        self.fail = False
        self.corrupt_total = 0

    def save(self, states: dict[Partition, PartitionState]) -> int:
        self.calls.append("save")
        if self.fail:
            raise OSError(28, "No space left on device")
        self.saves.append(states)
        for tp, st in states.items():
            old = self.saved.get(tp)
            if old is not None:  # merge rows by sensor, as the stores do
                rows = {sid: r for sid, r in zip(old.ids, old.rows, strict=True) if sid not in st.removed}
                rows.update({sid: r for sid, r in zip(st.ids, st.rows, strict=True)})
                st = PartitionState(list(rows), np.array(list(rows.values()), dtype=st.rows.dtype), st.offset, st.meta)
            self.saved[tp] = st
        return sum(s.rows.nbytes for s in states.values())

    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]:
        return {tp: self.saved[tp] for tp in partitions if tp in self.saved}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path())


class StaticOutbox:
    """An outbox whose alerts stand at fixed offsets and whose records were all stored."""

    def __init__(self, position: dict[int, int]) -> None:
        self.position = position

    def alerts_position(self) -> dict[int, int]:
        return dict(self.position)

    def refused(self) -> int:
        return 0

    def redeliver(self) -> int:
        return 0


def setup(model, position: dict[int, int] | None = None, outbox=None):
    calls: list[str] = []
    det = Detector(model.model, version=model.version)
    transport, store = FakeTransport(calls), MemoryStore(calls)
    coord = CheckpointCoordinator(detector=det, store=store, transport=transport, alerts_topic="alerts",
                                  outbox=outbox(transport) if outbox else StaticOutbox(position or {}),
                                  interval_seconds=0.0, metrics=WorkerMetrics())
    return det, transport, store, coord, calls


def publisher(transport: FakeTransport) -> Publisher:
    return Publisher(transport, alerts_topic="alerts", dead_letter_topic="dlq", sinks=[], metrics=WorkerMetrics(),
                     log_alerts=False)


def feed(det: Detector, coord: CheckpointCoordinator, tp: Partition, sensors: list[str], t0: int, n: int) -> None:
    ids = [s for _ in range(n) for s in sensors]
    ts = np.repeat(np.arange(t0, t0 + n, dtype=float) * 60, len(sensors))
    det.process(ids, ts, np.sin(ts / 600), np.full(len(ids), coord.owner(tp), dtype=np.int32))
    coord.track({tp: t0 + n})


def test_flush_then_save_then_commit(model) -> None:
    det, transport, store, coord, calls = setup(model, position={0: 17})
    feed(det, coord, A, ["a1", "a2"], 0, 20)
    feed(det, coord, B, ["b1"], 0, 30)
    assert coord.due()
    assert coord.checkpoint() is CheckpointOutcome.SAVED
    assert calls == ["flush", "save", "commit"]
    assert transport.committed == {A: 20, B: 30} and coord.pending == {} and not coord.due()
    assert sorted(store.saved[A].ids) == ["a1", "a2"] and store.saved[B].ids == ["b1"]
    assert store.saved[A].offset == 20 and store.saved[A].meta["alerts_next"] == {"0": 17}
    assert store.saved[A].rows["count"].tolist() == [20, 20]
    assert coord.checkpoint() is CheckpointOutcome.NOTHING_NEW and calls == ["flush", "save", "commit"]


def test_unacknowledged_records_postpone_the_save_and_the_commit(model) -> None:
    det, transport, store, coord, calls = setup(model)
    feed(det, coord, A, ["a1"], 0, 10)
    transport.fail_flush = True
    assert coord.checkpoint() is CheckpointOutcome.FLUSH_FAILED
    assert calls == ["flush"] and store.saved == {} and transport.committed == {}
    assert coord.pending == {A: 10}  # retried at the next checkpoint
    transport.fail_flush = False
    assert coord.checkpoint() is CheckpointOutcome.SAVED and transport.committed == {A: 10}


def test_refused_records_are_sent_again_and_hold_the_checkpoint_until_stored(model) -> None:
    det, transport, store, coord, calls = setup(model, outbox=publisher)
    out = coord.outbox
    feed(det, coord, A, ["a1"], 0, 10)
    ev = AlertEvent(sensor_id="a1", ts=540.0, value=1.0, forecast=0.0, residual=1.0, anomaly_score=0.9, threshold=0.35,
                    model_version="m", event=Transition.OPEN, opened_ts=540.0, peak_score=0.9)
    out.alert(ev, 0)
    out.dead_letter(RecordView("sensors", 0, 3, b"k", b"{oops"), Reason.NOT_JSON, "not JSON")
    transport.refuse = 3  # both at the flush, and the alert once more when sent again
    assert coord.checkpoint() is CheckpointOutcome.FLUSH_FAILED
    assert calls == ["flush", "flush"] and store.saved == {} and transport.committed == {}
    assert coord.pending == {A: 10} and out.refused() == 1 and transport.stored == {"dlq": [b"{oops"]}
    assert coord.checkpoint() is CheckpointOutcome.SAVED
    assert transport.committed == {A: 10} and out.refused() == 0
    assert len(transport.stored["alerts"]) == 1 and store.saved[A].meta["alerts_next"] == {"0": 1}


def test_a_failed_save_commits_nothing(model) -> None:
    det, transport, store, coord, calls = setup(model)
    feed(det, coord, A, ["a1"], 0, 10)
    store.fail = True
    assert coord.checkpoint() is CheckpointOutcome.SAVE_FAILED
    assert calls == ["flush", "save"] and transport.committed == {} and coord.pending == {A: 10}


class GatedStore(MemoryStore):
    """A store whose saves wait until the test opens the gate (a slow disk, on demand)."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__(calls)
        self.gate, self.entered = threading.Event(), threading.Event()

    def save(self, states: dict[Partition, PartitionState]) -> int:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().save(states)


def gated(model):
    det, transport, _, coord, calls = setup(model)
    coord.store = store = GatedStore(calls)
    return det, transport, store, coord


def ended(coord: CheckpointCoordinator, timeout: float = 30.0) -> CheckpointOutcome:
    """Tick the way the worker's loop does until a checkpoint ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = coord.tick()
        if outcome is not None:
            return outcome
        time.sleep(0.01)
    raise AssertionError("no checkpoint ended")


def test_a_save_beside_the_loop_holds_up_neither_scoring_nor_the_commit_rule(model) -> None:
    det, transport, store, coord = gated(model)
    feed(det, coord, A, ["a1"], 0, 10)
    assert coord.tick() is None  # started, not finished
    assert store.entered.wait(10)
    feed(det, coord, A, ["a1"], 10, 10)  # the loop scores on while the store writes
    assert coord.due() and coord.tick() is None  # due again, but one save at a time
    assert transport.committed == {} and store.saved == {}  # nothing committed before its state is saved
    store.gate.set()
    assert ended(coord) is CheckpointOutcome.SAVED
    assert transport.committed == {A: 10} and coord.pending == {A: 20}
    assert store.saved[A].rows["count"].tolist() == [10]  # the rows as they were when it started
    assert ended(coord) is CheckpointOutcome.SAVED  # the next, for what came since
    assert transport.committed == {A: 20} and store.saved[A].rows["count"].tolist() == [20]
    coord.close()


def test_a_save_that_fails_beside_the_loop_leaves_its_rows_to_the_next(model) -> None:
    det, transport, store, coord = gated(model)
    feed(det, coord, A, ["a1", "a2"], 0, 10)
    store.fail = True
    store.gate.set()
    assert ended(coord) is CheckpointOutcome.SAVE_FAILED
    assert coord.failing and transport.committed == {} and coord.pending == {A: 10}
    feed(det, coord, A, ["a1"], 10, 5)  # a2 changed only before the failed save
    store.fail = False
    assert coord.checkpoint() is CheckpointOutcome.SAVED and not coord.failing
    assert sorted(store.saved[A].ids) == ["a1", "a2"] and transport.committed == {A: 15}
    coord.close()


def test_a_checkpoint_waits_for_the_save_under_way(model) -> None:
    det, transport, store, coord = gated(model)
    feed(det, coord, A, ["a1"], 0, 10)
    assert coord.tick() is None and store.entered.wait(10)
    feed(det, coord, B, ["b1"], 0, 5)
    threading.Timer(0.2, store.gate.set).start()
    assert coord.checkpoint() is CheckpointOutcome.SAVED  # the final one, say: both saves land, in order
    assert transport.committed == {A: 10, B: 5} and store.calls.count("save") == 2
    coord.close()


def test_a_failed_commit_is_retried_at_the_next_checkpoint(model) -> None:
    det, transport, store, coord, calls = setup(model)
    feed(det, coord, A, ["a1"], 0, 10)
    transport.fail_commit = True
    coord.checkpoint()
    assert store.saved[A].offset == 10 and transport.committed == {} and coord.pending == {A: 10}
    transport.fail_commit = False
    coord.checkpoint()
    assert transport.committed == {A: 10} and coord.pending == {}


def test_a_store_gets_only_the_sensors_touched_since_the_last_save(model) -> None:
    det, _, store, coord, _ = setup(model)
    feed(det, coord, A, ["a1", "a2", "a3"], 0, 10)
    coord.checkpoint()
    feed(det, coord, A, ["a2"], 10, 5)
    coord.checkpoint()
    assert sorted(store.saves[0][A].ids) == ["a1", "a2", "a3"]
    assert store.saves[1][A].ids == ["a2"] and store.saves[1][A].offset == 15


def test_revoke_saves_without_commit_and_assign_restores_identically(model) -> None:
    det, transport, store, coord, calls = setup(model)
    feed(det, coord, A, ["a1", "a2"], 0, 50)
    feed(det, coord, B, ["b1"], 0, 50)
    before = {sid: det.bank.row(sid) for sid in ("a1", "a2")}
    coord.revoked([A])
    assert calls == ["flush", "save"] and transport.committed == {}  # the next owner resumes from the saved state
    assert "a1" not in det.bank and "a2" not in det.bank and "b1" in det.bank
    assert coord.pending == {B: 50}

    det2, transport2, _, coord2, _ = setup(model)
    coord2.store = store  # another worker, the same durable store
    coord2.assigned([A])
    for sid, row in before.items():
        got = det2.bank.row(sid)
        for col in ("count", "last_ts", "h", "fc_mean", "norm_mean"):
            np.testing.assert_array_equal(got[col], row[col])
        assert got["owner"] == coord2.owner(A)


def test_alerts_published_after_the_last_save_are_not_published_again(model) -> None:
    det, transport, store, coord, _ = setup(model, position={0: 40, 1: 7})
    feed(det, coord, A, ["a1"], 0, 10)
    coord.checkpoint()
    det2, transport2, _, coord2, _ = setup(model)
    coord2.store = store
    transport2.alert_keys = {("a1", 660.0, "open", "anomaly"), ("a1", 700.0, "open", "no_data")}
    coord2.assigned([A])
    assert transport2.read_back_from == {0: 40, 1: 7}  # read from the positions saved with the state

    def event(ts: float, transition: Transition, kind: AlertKind = AlertKind.ANOMALY) -> AlertEvent:
        return AlertEvent("a1", ts, 9.0, 1.0, 8.0, 1.0, 0.35, "v", transition, ts, 1.0, kind)

    assert not coord2.replayed(event(660.0, Transition.OPEN, AlertKind.NO_DATA))  # another alert at the same time
    assert coord2.replayed(event(700.0, Transition.OPEN, AlertKind.NO_DATA))
    assert coord2.replayed(event(660.0, Transition.OPEN))
    assert not coord2.replayed(event(660.0, Transition.OPEN))  # recognised once only
    assert not coord2.replayed(event(900.0, Transition.RESOLVED))


def metric(m: WorkerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return m.registry.get_sample_value(name, labels or {}) or 0.0


def test_evicted_sensors_are_tombstoned_in_an_incremental_store(model) -> None:
    calls: list[str] = []
    det = Detector(model.model, version=model.version, bank=BankParams(max_sensors=3, initial_capacity=3))
    store = MemoryStore(calls)
    coord = CheckpointCoordinator(detector=det, store=store, transport=FakeTransport(calls), alerts_topic="alerts",
                                  outbox=StaticOutbox({}), interval_seconds=0.0, metrics=WorkerMetrics())
    feed(det, coord, A, ["a1", "a2", "a3"], 0, 5)
    assert coord.checkpoint()
    feed(det, coord, B, ["b1"], 0, 5)  # the least recently seen of A's sensors makes room
    feed(det, coord, A, ["a2", "a3"], 5, 5)
    assert coord.checkpoint()
    assert store.saves[-1][A].removed == ["a1"]
    assert sorted(store.saved[A].ids) == ["a2", "a3"]  # a restore does not bring a1 back
    feed(det, coord, A, ["a2"], 10, 2)
    assert coord.checkpoint() and store.saves[-1][A].removed == []  # told once


def test_a_store_that_cannot_write_holds_the_offsets_reports_and_recovers(model) -> None:
    det, transport, store, coord, calls = setup(model)
    feed(det, coord, A, ["a1"], 0, 10)
    store.fail = True
    assert coord.checkpoint() is CheckpointOutcome.SAVE_FAILED
    assert coord.failing and transport.committed == {}
    m = coord.metrics
    assert metric(m, "streamrnn_checkpoint_failing") == 1
    assert metric(m, "streamrnn_checkpoints_total", {"result": "save_failed"}) == 1
    feed(det, coord, A, ["a1"], 10, 5)
    store.fail = False
    assert coord.checkpoint() is CheckpointOutcome.SAVED
    assert not coord.failing and transport.committed == {A: 15}
    assert metric(m, "streamrnn_checkpoint_failing") == 0


def test_a_corrupt_row_starts_only_its_sensor_fresh_and_is_counted(model, tmp_path) -> None:
    det, transport, _, coord, _ = setup(model)
    coord.store = LocalStateStore(tmp_path, row_dtype=det.bank.row_dtype)
    feed(det, coord, A, ["a1", "a2"], 0, 10)
    feed(det, coord, B, ["b1"], 0, 10)
    assert coord.checkpoint()
    coord.store.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:  # bit rot in one row, its checksum as it was
        (row,) = db.execute("SELECT row FROM sensors WHERE sensor = ?", (b"a1",)).fetchone()
        db.execute("UPDATE sensors SET row = ? WHERE sensor = ?", (b"\0" * 16 + row[16:], b"a1"))

    det2, _, _, coord2, _ = setup(model)
    coord2.store = LocalStateStore(tmp_path, row_dtype=det2.bank.row_dtype)
    coord2.assigned([A, B])
    assert "a1" not in det2.bank and "a2" in det2.bank and "b1" in det2.bank
    assert metric(coord2.metrics, "streamrnn_state_corrupt_total") == 1
    feed(det2, coord2, A, ["a1"], 10, 5)  # and the worker keeps serving it
    assert det2.bank.row("a1")["count"] == 5


def test_an_unreadable_state_database_is_set_aside_and_every_sensor_starts_fresh(model, tmp_path) -> None:
    det, _, _, coord, _ = setup(model)
    coord.store = LocalStateStore(tmp_path, row_dtype=det.bank.row_dtype)
    feed(det, coord, A, ["a1"], 0, 10)
    assert coord.checkpoint()
    coord.store.close()
    db = tmp_path / "state.sqlite"
    db.write_bytes(b"\0" * 100 + db.read_bytes()[100:])  # the header is gone

    det2, _, _, coord2, _ = setup(model)
    coord2.store = LocalStateStore(tmp_path, row_dtype=det2.bank.row_dtype)
    coord2.assigned([A])
    assert "a1" not in det2.bank
    assert metric(coord2.metrics, "streamrnn_state_corrupt_total") == 1
    assert [p.name for p in tmp_path.glob("state.sqlite.corrupt-*")]  # kept for inspection
    feed(det2, coord2, A, ["a1"], 10, 5)
    assert coord2.checkpoint() and coord2.store.load([A])[A].ids == ["a1"]


def test_a_restored_sensor_is_not_saved_again_until_it_changes(model, tmp_path) -> None:
    det, _, store, coord, _ = setup(model)
    feed(det, coord, A, ["a1", "a2"], 0, 10)
    assert coord.checkpoint()
    det2, _, _, coord2, _ = setup(model)
    coord2.store = store
    coord2.assigned([A])
    feed(det2, coord2, A, ["a2"], 10, 3)
    assert coord2.checkpoint() and store.saves[-1][A].ids == ["a2"]


def test_a_model_swap_saves_every_sensor_at_the_next_checkpoint(model) -> None:
    det, _, store, coord, _ = setup(model)
    feed(det, coord, A, ["a1", "a2"], 0, 10)
    assert coord.checkpoint()
    det.swap_model(model.model, "v2")  # every hidden state re-warmed: all rows changed
    feed(det, coord, A, ["a2"], 10, 1)
    assert coord.checkpoint()
    assert sorted(store.saves[-1][A].ids) == ["a1", "a2"] and store.saves[-1][A].meta["model_version"] == "v2"


def test_the_local_store_merges_changes_and_removals_by_sensor(model, tmp_path) -> None:
    det, _, _, coord, _ = setup(model)
    store = LocalStateStore(tmp_path, row_dtype=det.bank.row_dtype)
    coord.store = store
    feed(det, coord, A, ["a1", "a2", "a3"], 0, 10)
    assert coord.checkpoint()
    full = store.save  # the bytes of a save follow the rows it holds
    coord._departed[A] = ["a3"]  # as an eviction files it
    feed(det, coord, A, ["a1"], 10, 2)
    sizes = []
    store.save = lambda states: sizes.append(full(states)) or sizes[-1]  # type: ignore[method-assign]
    assert coord.checkpoint()
    got = store.load([A])[A]
    assert sorted(got.ids) == ["a1", "a2"] and got.offset == 12
    assert det.bank.row_dtype.itemsize <= sizes[0] < 2 * det.bank.row_dtype.itemsize  # one row written, not three
    i = got.ids.index("a1")
    assert got.rows[i]["count"] == 12 and got.rows[got.ids.index("a2")]["count"] == 10


def test_the_local_store_keeps_any_id_and_every_byte_across_statement_chunks(tmp_path) -> None:
    from streamrnn.daemon.stores import local

    odd = ["", "ü-sensor/°C", "x" * 300, "lone-\udcff", "a,b\"c", "tab\tnew\nline"]
    n = local._CHUNK * 2 + len(odd)  # more than one statement, the last one short
    ids = odd + [f"s{i}" for i in range(n - len(odd))]
    rows = np.zeros(n, dtype=[("k", "int64"), ("v", "float32", 3)])
    rows["k"] = np.arange(n)
    rows["v"] = np.random.default_rng(0).normal(size=(n, 3))
    store = LocalStateStore(tmp_path)
    store.save({A: PartitionState(ids, rows, 5, {})})
    rows["k"][:10] += 100  # an update lands on the saved rows, by id
    store.save({A: PartitionState(ids[:10], rows[:10], 6, {})})
    store.close()
    again = LocalStateStore(tmp_path)
    got = again.load([A])[A]
    assert again.corrupt_total == 0 and got.offset == 6  # every row passes the CRC the load checks with zlib
    by_id = {sid: row.tobytes() for sid, row in zip(got.ids, got.rows, strict=True)}
    assert set(by_id) == set(ids) and [by_id[i] for i in ids] == [row.tobytes() for row in rows]


def test_row_checksums_are_zlibs() -> None:
    from streamrnn.daemon.stores.checksum import crc32_rows

    rng = np.random.default_rng(1)
    for size in (1, 7, 8, 9, 63, 6320):
        raw = rng.integers(0, 256, size=(20, size), dtype=np.uint8)
        rows = raw.view(np.dtype([("b", "u1", size)])).ravel()
        assert crc32_rows(rows).tolist() == [zlib.crc32(r.tobytes()) for r in raw]


def test_rows_of_an_earlier_layout_load_field_by_field_and_are_rewritten(model, tmp_path) -> None:
    det, _, _, coord, _ = setup(model)
    old = np.dtype([("count", "int64"), ("last_ts", "float64")])
    store = LocalStateStore(tmp_path, row_dtype=det.bank.row_dtype)
    rows = np.zeros(2, dtype=old)
    rows["count"], rows["last_ts"] = 7, 420.0
    store.save({A: PartitionState(["a1", "a2"], rows, 7, {"model_version": model.version})})
    coord.store = store
    coord.assigned([A])
    assert det.bank.row("a1")["count"] == 7 and det.bank.row("a2")["last_ts"] == 420.0
    feed(det, coord, A, ["a1"], 8, 1)
    assert coord.checkpoint()
    got = store.load([A])[A]
    assert got.rows.dtype == det.bank.row_dtype and sorted(got.ids) == ["a1", "a2"]  # a2 rewritten in the new layout


def test_a_partition_file_of_an_earlier_version_is_imported(model, tmp_path) -> None:
    rows = np.zeros(1, dtype=[("count", "int64")])
    rows["count"] = 3
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(["a1"]), rows=rows, meta=np.frombuffer(json.dumps({"offset": 9}).encode(), dtype=np.uint8))
    write_checksummed(tmp_path / "partitions" / "sensors~0.npz", buf.getvalue())
    store = LocalStateStore(tmp_path)
    got = store.load([A])[A]
    assert got.ids == ["a1"] and got.offset == 9 and got.rows["count"][0] == 3
    assert not (tmp_path / "partitions" / "sensors~0.npz").exists()
    again = LocalStateStore(tmp_path).load([A])[A]  # now from the database
    assert again.ids == ["a1"] and again.offset == 9
