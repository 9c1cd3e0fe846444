"""Durable state, crash recovery and scale-out, against the real broker."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamrnn.devtools.broker import EmbeddedBroker
from streamrnn.daemon.stores.local import LocalStateStore
from streamrnn.core import Detector
from streamrnn.lifecycle.artifacts import default_model_path, load_model
from streamrnn.devtools.fleet import SensorFleet

from .conftest import as_messages, consume_all, produce, worker_config

pytestmark = pytest.mark.kafka
PARTS = 4


def stream(seed: int, sensors: int = 30, ticks: int = 1000):
    fleet = SensorFleet(sensors, seed=seed, anomaly_rate=0.002, clean_ticks=200, min_gap=150)
    df = fleet.frame(ticks)
    return df, as_messages(df)


def reference(df) -> tuple[Detector, list[tuple[str, float, str]]]:
    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version)
    res = det.process(df.sensor_id.tolist(), df.ts.to_numpy(), df.value.to_numpy())
    return det, sorted((e.sensor_id, e.ts, e.event) for e in res.events)


def assert_alerts_match(kafka: EmbeddedBroker, topic: str, expected: list[tuple[str, float, str]]) -> None:
    """The alerts topic holds exactly the expected events, none of them twice."""
    records = consume_all(kafka, topic, idle=3.0)
    events = [(a["sensor_id"], a["ts"], a["event"]) for a in (orjson.loads(r.value) for r in records)]
    assert len(events) == len(set(events)), "an alert event was published twice"
    at = {e: r.offset for e, r in zip(events, records, strict=True)}
    missing = sorted(set(expected) - set(events))
    extra = sorted((at[e], e) for e in set(events) - set(expected))
    assert sorted(events) == expected, f"missing {missing}, unexpected (offset, event) {extra}, offsets {sorted(at.values())}"


def start_feeder(kafka: EmbeddedBroker, topic: str, msgs: list, chunk: int, pause: float) -> tuple[threading.Thread, threading.Event]:
    """Produce the stream in chunks in the background, so it is still flowing when a worker dies."""
    stop = threading.Event()

    def feed() -> None:
        for i in range(0, len(msgs), chunk):
            produce(kafka, topic, msgs[i:i + chunk])
            if stop.wait(pause):
                return

    t = threading.Thread(target=feed)
    t.start()
    return t, stop


def wait_drained(w, topic: str, total_parts: int = PARTS, timeout: float = 120.0) -> None:
    """Until the worker holds every partition and none lags."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lags = [w.metric("streamrnn_consumer_lag", {"topic": topic, "partition": str(p)}) for p in range(total_parts)]
            text = w.metrics_text()
        except OSError:  # metrics endpoint not up yet
            time.sleep(0.3)
            continue
        if w.metric("streamrnn_assigned_partitions") == total_parts and all(x == 0 for x in lags) \
                and all(f'partition="{p}"' in text for p in range(total_parts)):
            return
        time.sleep(0.3)
    raise AssertionError(f"not drained:\n{w.log()[-3000:]}")


def test_kill_9_at_random_points_loses_nothing_and_duplicates_no_alert(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "crash"
    kafka.create_topics({topic: PARTS, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    df, msgs = stream(31)
    ref, ref_events = reference(df)
    assert len(ref_events) >= 10
    cfg, port = worker_config(kafka, tmp_path, topic, kafka={"max_poll_records": 300},
                              state={"checkpoint_interval_seconds": 0.3}, training={"enabled": False})
    feeder, stop = start_feeder(kafka, topic, msgs, chunk=1000, pause=0.3)
    rng = np.random.default_rng(7)
    try:
        for _ in range(3):
            w = run_worker(cfg, port)
            w.wait_metric("streamrnn_assigned_partitions", PARTS)
            time.sleep(float(rng.uniform(0.3, 2.0)))
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait()
        feeder.join()
        w = run_worker(cfg, port)
        wait_drained(w, topic)
        assert w.terminate() == 0
    finally:
        stop.set()
        feeder.join()

    assert_alerts_match(kafka, f"{topic}-alerts", ref_events)

    states = LocalStateStore(tmp_path / "state").load([(topic, p) for p in range(PARTS)])
    got = {sid: row for st in states.values() for sid, row in zip(st.ids, st.rows)}
    assert sorted(got) == sorted(ref.bank.held()[0])
    for sid, row in got.items():
        want = ref.bank.row(sid)
        assert row["count"] == want["count"] and row["last_ts"] == want["last_ts"]
        np.testing.assert_allclose(row["fc_mean"], want["fc_mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["h"], want["h"], atol=1e-4)


def test_two_workers_share_partitions_and_a_survivor_takes_over_from_the_changelog(
        kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "scale"
    kafka.create_topics({topic: PARTS, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    df, msgs = stream(32)
    _, ref_events = reference(df)
    common = dict(kafka={"max_poll_records": 200}, state={"backend": "kafka", "checkpoint_interval_seconds": 0.3},
                  training={"enabled": False})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a, port_a = worker_config(kafka, tmp_path / "a", topic, **common)
    cfg_b, port_b = worker_config(kafka, tmp_path / "b", topic, **common)
    # paced so the stream is still flowing when the second worker has joined (both start in seconds)
    feeder, stop = start_feeder(kafka, topic, msgs, chunk=500, pause=0.4)
    try:
        a = run_worker(cfg_a, port_a)
        a.wait_metric("streamrnn_readings_scored_total", 1000)
        b = run_worker(cfg_b, port_b)
        b.wait_metric("streamrnn_readings_scored_total", 1000)  # the group split the partitions
        assert 0 < a.metric("streamrnn_assigned_partitions") < PARTS
        a.proc.send_signal(signal.SIGKILL)  # mid-stream
        a.proc.wait()
        feeder.join()
        wait_drained(b, topic)
        assert b.metric("streamrnn_state_restore_duration_seconds_count") >= 2  # at the split and at the takeover
        assert b.terminate() == 0
    finally:
        stop.set()
        feeder.join()
    assert_alerts_match(kafka, f"{topic}-alerts", ref_events)


def test_a_clean_restart_forecasts_from_the_saved_hidden_state(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "restartfc"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    t = np.arange(600)
    v = 20 + 3 * np.sin(2 * np.pi * t / 50) + np.random.default_rng(3).normal(0, 0.05, len(t))
    v[400] += 30  # the first reading after the restart is a spike: its alert carries the forecast
    msg = lambda i: (b"m1", orjson.dumps({"sensor_id": "m1", "ts": 60.0 * i, "value": float(v[i])}))  # noqa: E731
    mf = load_model(default_model_path())
    ref = Detector(mf.model, version=mf.version)
    r = ref.process(["m1"] * 401, 60.0 * t[:401], v[:401])
    expected = r.forecast[400]

    cfg, port = worker_config(kafka, tmp_path, topic, training={"enabled": False})
    w = run_worker(cfg, port)
    produce(kafka, topic, [msg(i) for i in range(400)])
    w.wait_metric("streamrnn_readings_scored_total", 400)
    assert w.terminate() == 0
    w2 = run_worker(cfg, port)
    produce(kafka, topic, [msg(400)])
    w2.wait_metric("streamrnn_alert_events_total", 1, labels={"event": "open"})
    assert w2.terminate() == 0
    opens = [orjson.loads(x.value) for x in consume_all(kafka, f"{topic}-alerts", expect=1)]
    assert opens[0]["ts"] == 60.0 * 400
    assert opens[0]["forecast"] == pytest.approx(expected, rel=1e-6)


def poll(check, timeout: float = 60.0, every: float = 0.2):
    """Wait until ``check()`` returns something truthy; returns it (fails on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s")


def committed(kafka: EmbeddedBroker, group: str, topic: str) -> int:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(PARTS))
    finally:
        c.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 4 MiB tmpfs: a state directory that can fill up (mounting needs root)."""
    import os
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("STREAMRNN_REQUIRE_OPS_TOOLS"):
            pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_state_directory_holds_offsets_and_the_worker_recovers(kafka: EmbeddedBroker, tmp_path: Path,
                                                                      run_worker, small_tmpfs: Path) -> None:
    topic = "diskfull"
    kafka.create_topics({topic: PARTS, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    df, msgs = stream(seed=9, sensors=20, ticks=600)
    first, second = msgs[: len(msgs) // 2], msgs[len(msgs) // 2:]
    cfg, port = worker_config(kafka, tmp_path, topic, state={"dir": str(small_tmpfs / "state"),
                                                             "checkpoint_interval_seconds": 0.3})
    w = run_worker(cfg, port)
    produce(kafka, topic, first)
    poll(lambda: committed(kafka, f"g-{topic}", topic) == len(first))

    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # take every free byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    produce(kafka, topic, second)
    w.wait_metric("streamrnn_readings_scored_total", len(msgs))
    poll(lambda: w.metric("streamrnn_checkpoint_failing") == 1)
    status, body = w.get("/readyz")
    assert status == 503 and body["checks"]["state_saved"] is False and body["checks"]["model_loaded"] is True
    assert committed(kafka, f"g-{topic}", topic) == len(first)  # nothing past the last saved state
    saved = LocalStateStore(small_tmpfs / "state").load([(topic, p) for p in range(PARTS)])
    assert sum(st.offset for st in saved.values()) == len(first)  # the old state is still whole and readable

    filler.unlink()
    poll(lambda: w.metric("streamrnn_checkpoint_failing") == 0)
    poll(lambda: committed(kafka, f"g-{topic}", topic) == len(msgs))
    assert w.get("/readyz")[0] == 200
    assert w.metric("streamrnn_checkpoints_total", {"result": "save_failed"}) >= 1
    assert w.terminate() == 0
    saved = LocalStateStore(small_tmpfs / "state").load([(topic, p) for p in range(PARTS)])
    assert sum(st.offset for st in saved.values()) == len(msgs)


def test_changelog_tombstones_and_corrupt_records(kafka: EmbeddedBroker) -> None:
    from confluent_kafka import Producer

    from streamrnn.config import KafkaConfig
    from streamrnn.daemon.stores.base import PartitionState
    from streamrnn.daemon.stores.changelog import ChangelogStateStore

    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version)
    det.process(["a", "b", "c"] * 20, np.repeat(np.arange(20.0), 3), np.arange(60.0))
    _, slots = det.bank.held()
    topic, log = "readings", "tomb-changelog"
    store = ChangelogStateStore(KafkaConfig(bootstrap_servers=[kafka.bootstrap]), topic=log,
                                row_dtype=det.bank.row_dtype, partitions=1)
    try:
        p0, p1 = (topic, 0), (topic, 1)
        store.save({p0: PartitionState(["a", "b", "c"], det.bank.pack(slots), 60),
                    p1: PartitionState(["a"], det.bank.pack(slots[:1]), 7)})
        store.save({p0: PartitionState([], det.bank.pack(slots[:0]), 61, removed=["a"])})
        raw = Producer({"bootstrap.servers": kafka.bootstrap})
        raw.produce(log, key=f"{topic}/0/c".encode(), value=b"SRN1" + store.schema + b"\x07" * 30, partition=0)  # a torn row
        raw.produce(log, key=f"{topic}/1/".encode(), value=b"{not json", partition=0)  # p1's metadata garbled
        raw.flush(10)
        states = store.load([p0, p1])
    finally:
        store.close()
    assert set(states) == {p0}  # p1's sensors start fresh
    assert states[p0].ids == ["b"] and states[p0].offset == 61  # a evicted (tombstone), c unreadable
    assert store.corrupt_total == 2


def test_changelog_restores_from_its_cache_and_reads_only_what_was_written_since(kafka: EmbeddedBroker,
                                                                                  tmp_path: Path) -> None:
    from streamrnn.config import KafkaConfig
    from streamrnn.daemon.stores.base import PartitionState
    from streamrnn.daemon.stores.changelog import ChangelogStateStore

    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version)
    det.process(["a", "b", "c"] * 20, np.repeat(np.arange(20.0), 3), np.arange(60.0))
    _, slots = det.bank.held()
    p0 = ("readings", 0)
    kcfg = KafkaConfig(bootstrap_servers=[kafka.bootstrap])

    def store(cache: str) -> ChangelogStateStore:
        return ChangelogStateStore(kcfg, topic="cached-changelog", row_dtype=det.bank.row_dtype, partitions=1,
                                   cache_dir=tmp_path / cache)

    first, other = store("first"), store("other")
    try:
        first.save({p0: PartitionState(["a", "b", "c"], det.bank.pack(slots), 60)})
        assert sorted(other.load([p0])[p0].ids) == ["a", "b", "c"]  # no cache yet: the whole changelog
        changed = det.bank.pack(slots[1:2])
        changed["count"] = 99
        other.save({p0: PartitionState(["b"], changed, 70, removed=["c"])})  # the partition moved, then came back
        got = first.load([p0])[p0]
        assert first.records_read == 3  # the other worker's tombstone, row and metadata only
        assert sorted(got.ids) == ["a", "b"] and got.offset == 70
        assert got.rows[got.ids.index("b")]["count"] == 99
        np.testing.assert_array_equal(got.rows[got.ids.index("a")]["h"], det.bank.row("a")["h"])
    finally:
        first.close()
        other.close()
    again = store("first")  # after a restart: everything is in the cache
    try:
        got = again.load([p0])[p0]
        assert again.records_read == 0 and sorted(got.ids) == ["a", "b"] and got.offset == 70
    finally:
        again.close()


def test_a_broker_killed_and_restarted_mid_stream_loses_and_repeats_no_alert(tmp_path: Path, run_worker,
                                                                            s3_env: dict[str, str]) -> None:
    from streamrnn.devtools.broker import free_port

    topic = "restart"
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log", storage="s3://tansu/", env=s3_env).start()
    w = None
    try:
        broker.create_topics({topic: PARTS, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
        df, msgs = stream(seed=13, sensors=30, ticks=800)
        _, ref_events = reference(df)
        cut = len(msgs) // 2
        produce(broker, topic, msgs[:cut])
        cfg, port = worker_config(broker, tmp_path, topic)
        w = run_worker(cfg, port)
        # The kill comes once the broker has stored the first half's alerts. Killed with
        # alerts in flight, tansu's s3 engine lost a produce request's records in about
        # one run in three with either client, although the client had them reported
        # delivered and the object store never received the batch: that window is the
        # broker's, not the worker's (the outage test kills a broker with alerts in flight).
        first_half = set(zip(df.sensor_id.iloc[:cut], df.ts.iloc[:cut], strict=True))
        first = sum((e[0], e[1]) in first_half for e in ref_events)
        assert len(consume_all(broker, f"{topic}-alerts", expect=first, timeout=60)) >= first
        broker.proc.send_signal(signal.SIGKILL)  # mid-stream: the worker is up, its offsets partly committed
        broker.proc.wait()
        broker.stop()
        broker.start()  # same port, same cluster, same storage
        produce(broker, topic, msgs[cut:])
        w.wait_metric("streamrnn_readings_scored_total", len(msgs), timeout=120)
        poll(lambda: w.metric("streamrnn_broker_up") == 1 and w.metric("streamrnn_checkpoint_failing") == 0)
        assert w.terminate() == 0
        assert_alerts_match(broker, f"{topic}-alerts", ref_events)
    finally:
        if w is not None:
            w.kill()
        broker.stop()
