"""The worker against a real broker (tansu), in a subprocess, as operators run it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from streamrnn.devtools.broker import EmbeddedBroker, free_port
from streamrnn.daemon.stores.local import LocalStateStore
from streamrnn.core import Detector
from streamrnn.lifecycle.artifacts import default_model_path, load_model
from streamrnn.devtools.fleet import SensorFleet

from .conftest import as_messages, consume_all, produce, worker_config

pytestmark = pytest.mark.kafka

ALERT_FIELDS = {"sensor_id", "ts", "value", "forecast", "residual", "anomaly_score", "threshold", "model_version", "event",
                "kind", "evidence", "tags"}


def committed_offsets(kafka: EmbeddedBroker, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        c.close()


def test_end_to_end_alerts_on_injected_anomalies(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "e2e"
    kafka.create_topics({topic: 4, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    fleet = SensorFleet(30, seed=21, anomaly_rate=0.0006, clean_ticks=300, min_gap=600)
    df = fleet.frame(2000)
    anomalies = fleet.all_anomalies()
    produce(kafka, topic, as_messages(df))

    cfg, port = worker_config(kafka, tmp_path, topic)
    w = run_worker(cfg, port)
    w.wait_metric("streamrnn_readings_scored_total", len(df), timeout=120)
    lag = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (len(lag) < 4 or any(lag.values())):
        lag = {p: w.metric("streamrnn_consumer_lag", {"topic": topic, "partition": str(p)}) for p in range(4)}
        time.sleep(0.2)
    assert lag == {0: 0, 1: 0, 2: 0, 3: 0}
    n_events = int(w.metric("streamrnn_alert_events_total"))
    alerts = [r for r in consume_all(kafka, f"{topic}-alerts", expect=n_events)]
    assert w.terminate() == 0

    events = [orjson.loads(r.value) for r in alerts]
    assert len(events) == n_events > 0
    for r, e in zip(alerts, events):
        assert ALERT_FIELDS <= set(e) and r.key == e["sensor_id"].encode()
        assert e["event"] in ("open", "resolved") and e["model_version"] == "default-1"
        assert e["kind"] == "anomaly" and 0 <= e["anomaly_score"] <= 1  # no sensor of this fleet falls silent
        assert e["tags"] == {} and e["evidence"]["name"] in ("residual", "run", "range", "time_of_day", "pattern", "stuck")
    opens = [e for e in events if e["event"] == "open"]

    # Recall: an anomaly counts as detected when its sensor opens an alert between its
    # start and ten readings after its end.
    slack = 10 * 60.0
    def near(e, a) -> bool:
        return e["sensor_id"] == a.sensor_id and a.start_ts <= e["ts"] <= a.end_ts + slack
    detected = [a for a in anomalies if any(near(e, a) for e in opens)]
    false_opens = [e for e in opens if not any(near(e, a) for a in anomalies)]
    normal = int((~df.is_anomalous).sum())
    recall = len(detected) / len(anomalies)
    false_per_1000 = 1000 * len(false_opens) / normal
    print(f"\nE2E: {len(anomalies)} anomalies, recall {recall:.3f}, {len(false_opens)} false alerts "
          f"= {false_per_1000:.3f} per 1000 normal readings ({normal} normal readings)")
    assert len(anomalies) >= 20
    assert recall >= 0.65
    assert false_per_1000 <= 0.5

    # The daemon's alerts are exactly what the offline detector finds in the same stream.
    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version)
    res = det.process(df.sensor_id.tolist(), df.ts.to_numpy(), df.value.to_numpy())
    offline = sorted((e.sensor_id, e.ts, e.event.value, e.kind.value) for e in res.events)
    assert sorted((e["sensor_id"], e["ts"], e["event"], e["kind"]) for e in events) == offline


def test_malformed_messages_go_to_the_dead_letter_topic(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "dlq"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    good = [(b"s1", orjson.dumps({"sensor_id": "s1", "ts": 1_700_000_000 + i, "value": i % 7})) for i in range(50)]
    bad = {
        "not_json": [(b"k1", b"{oops"), (b"k2", b"\x00\x01binary")],
        "not_object": [(b"k3", b"[1,2]")],
        "missing_field": [(b"k4", b'{"ts": 1, "value": 2}'), (b"k5", b'{"sensor_id": "x", "value": 2}')],
        "non_numeric_value": [(b"k6", b'{"sensor_id": "x", "ts": 1, "value": "high"}')],
        "non_finite_value": [(b"k7", b'{"sensor_id": "x", "ts": 1, "value": "NaN"}')],
        "bad_timestamp": [(b"k8", b'{"sensor_id": "x", "ts": "tea time", "value": 2}')],
        "out_of_order": [(b"s1", orjson.dumps({"sensor_id": "s1", "ts": 1_700_000_000 + 3, "value": 1.0}))],
        "future_timestamp": [(b"k9", orjson.dumps({"sensor_id": "x", "ts": (time.time() + 86400) * 1000, "value": 2}))],
        "bad_sensor_id": [(b"k10", b'{"sensor_id": true, "ts": 1, "value": 2}'),
                          (b"k11", orjson.dumps({"sensor_id": "x" * 5000, "ts": 1, "value": 2}))],
    }
    # values near the float range overflow a sensor's state: it is reset, and keeps being scored
    extreme = [(b"s2", orjson.dumps({"sensor_id": "s2", "ts": 1_700_000_000 + i, "value": v}))
               for i, v in enumerate([1.0, 2.0] * 10 + [1.7e308, -1.7e308] + [1.0, 2.0] * 3)]
    good += extreme
    msgs = good + [m for ms in bad.values() for m in ms]
    produce(kafka, topic, msgs)
    cfg, port = worker_config(kafka, tmp_path, topic, message={"out_of_order": "dead_letter"})
    w = run_worker(cfg, port)
    w.wait_metric("streamrnn_messages_consumed_total", len(msgs))
    expected = sum(len(v) for v in bad.values())
    w.wait_metric("streamrnn_dead_letters_total", expected)
    for reason, ms in bad.items():
        assert w.metric("streamrnn_dead_letters_total", {"reason": reason}) == len(ms), reason
    assert w.metric("streamrnn_readings_scored_total") == len(good)
    assert w.metric("streamrnn_sensor_resets_total", {"reason": "non_finite_state"}) == 1
    # every consumed message is exactly one of scored, dead-lettered or dropped
    accounted = sum(w.metric(m) for m in ("streamrnn_readings_scored_total", "streamrnn_dead_letters_total",
                                          "streamrnn_readings_dropped_total"))
    assert accounted == w.metric("streamrnn_messages_consumed_total") == len(msgs)
    dl = consume_all(kafka, f"{topic}-dlq", expect=expected)
    assert w.terminate() == 0

    assert len(dl) == expected
    originals = {v for ms in bad.values() for _, v in ms}
    for r in dl:
        h = {k: v.decode() for k, v in r.headers}
        assert h["streamrnn.reason"] in bad and h["streamrnn.detail"]
        assert h["streamrnn.topic"] == topic and int(h["streamrnn.partition"]) in (0, 1) and int(h["streamrnn.offset"]) >= 0
        assert r.value in originals
    by_reason = {}
    for r in dl:
        by_reason.setdefault(dict(r.headers)["streamrnn.reason"].decode(), []).append(r.value)
    assert {k: sorted(v) for k, v in by_reason.items()} == {k: sorted(v for _, v in ms) for k, ms in bad.items()}


def test_sigterm_mid_stream_commits_and_a_restart_resumes(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "restart"
    parts = 4
    kafka.create_topics({topic: parts, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    fleet = SensorFleet(20, seed=8)
    df = fleet.frame(1500)
    msgs = as_messages(df)
    n = len(msgs)
    stop = threading.Event()

    def feed() -> None:  # keeps producing while the worker is stopped and restarted
        for i in range(0, n, 1000):
            produce(kafka, topic, msgs[i:i + 1000])
            if stop.wait(0.15):
                return

    feeder = threading.Thread(target=feed)
    feeder.start()
    cfg, port = worker_config(kafka, tmp_path, topic, kafka={"max_poll_records": 500})
    w1 = run_worker(cfg, port)
    scored = w1.wait_metric("streamrnn_readings_scored_total", 3000)
    assert scored < n  # really mid-stream
    assert w1.terminate() == 0
    assert "stopped" in w1.log()

    committed = committed_offsets(kafka, f"g-{topic}", topic, parts)
    states = LocalStateStore(tmp_path / "state").load([(topic, p) for p in range(parts)])
    assert {tp: st.offset for tp, st in states.items()} == {(topic, p): o for p, o in committed.items() if o}
    counted = sum(int(st.rows["count"].sum()) for st in states.values())
    assert counted == sum(committed.values()) > 0  # the state reflects exactly the committed readings

    w2 = run_worker(cfg, port)
    feeder.join()
    w2.wait_metric("streamrnn_readings_scored_total", n - sum(committed.values()), timeout=90)
    time.sleep(1.0)
    assert w2.metric("streamrnn_readings_scored_total") == n - sum(committed.values())  # nothing twice
    assert w2.metric("streamrnn_readings_dropped_total") == 0
    assert w2.terminate() == 0
    states = LocalStateStore(tmp_path / "state").load([(topic, p) for p in range(parts)])
    assert sorted(c for st in states.values() for c in st.rows["count"].tolist()) == [1500] * 20  # nothing lost
    assert sum(committed_offsets(kafka, f"g-{topic}", topic, parts).values()) == n


def test_unreachable_broker_is_retried_and_reported(tmp_path: Path, run_worker) -> None:
    port = free_port()
    late = EmbeddedBroker(port=port, log_path=tmp_path / "late-broker.log")
    topic = "late"
    cfg, mport = worker_config(late, tmp_path, topic)
    w = run_worker(cfg, mport)
    try:
        w.wait_metric("streamrnn_broker_connection_retries_total", 2, timeout=30)
        assert w.metric("streamrnn_broker_up") == 0
        status, body = w.get("/readyz")
        assert status == 503 and body["checks"]["broker_reachable"] is False
        assert w.get("/healthz")[0] == 200

        late.start()
        late.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
        produce(late, topic, [(b"a", orjson.dumps({"sensor_id": "a", "ts": i, "value": float(np.sin(i))})) for i in range(1, 101)])
        w.wait_metric("streamrnn_readings_scored_total", 100, timeout=60)
        assert w.metric("streamrnn_broker_up") == 1
        deadline = time.monotonic() + 10
        while w.get("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert w.get("/readyz")[0] == 200
        assert w.terminate() == 0
        assert "unreachable" in w.log()
    finally:
        w.kill()
        late.stop()


def test_broker_outage_mid_run_is_survived(tmp_path: Path, run_worker) -> None:
    topic = "outage"
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "b1.log").start()
    topics = {topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1}
    batch = lambda lo, hi: [(b"a", orjson.dumps({"sensor_id": "a", "ts": i * 60, "value": float(np.sin(i / 5))}))  # noqa: E731
                            for i in range(lo, hi)]
    broker.create_topics(topics)
    produce(broker, topic, batch(1, 101))
    cfg, port = worker_config(broker, tmp_path, topic)
    w = run_worker(cfg, port)
    try:
        w.wait_metric("streamrnn_readings_scored_total", 100)
        broker.proc.kill()  # the broker dies; memory storage loses everything
        broker.stop()
        deadline = time.monotonic() + 30
        while w.metric("streamrnn_broker_up") != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert w.metric("streamrnn_broker_up") == 0
        time.sleep(2)
        assert w.proc.poll() is None and w.get("/healthz")[0] == 200
        assert w.get("/readyz")[0] == 503

        broker.start()  # same port again
        broker.create_topics(topics)
        produce(broker, topic, batch(101, 201))
        w.wait_metric("streamrnn_readings_scored_total", 200, timeout=90)
        assert w.metric("streamrnn_broker_up") == 1
        assert w.terminate() == 0
    finally:
        w.kill()
        broker.stop()


def test_hostile_input_leaves_sensors_able_to_alert_and_a_silent_sensor_raises_no_data(
        kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "hostile"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    # From UTC midnight two days ago: recent enough to be no future timestamp, and the
    # same time of day in every run, so the scores do not depend on when the test runs.
    n, step, base = 1000, 10.0, float((int(time.time()) // 86400 - 2) * 86400)
    rng = np.random.default_rng(11)
    spike_at = {"s1": 600, "s2": 700, "s3": 800, "s4": 850, "s5": 900}
    msgs: list[tuple[bytes, bytes]] = []
    for i in range(n):
        for sid in ("s0", "s1", "s2", "s3", "s4", "s5"):
            if sid == "s4" and 400 <= i < 700:
                continue  # s4 falls silent for 3,000 s (300 of its 10 s intervals)
            t = base + i * step
            v = float(20.0 + np.sin(i / 30.0) + rng.normal(0.0, 0.1) + (2.0 if spike_at.get(sid) == i else 0.0))
            ts: float | int = t
            if sid == "s3" and i >= 300:
                ts = int(t * 1_000_000)  # a producer switching to epoch microseconds
            msgs.append((sid.encode(), orjson.dumps({"sensor_id": sid, "ts": ts, "value": v})))
            if i == 300 and sid == "s1":  # a device clock 31 years ahead, once
                msgs.append((b"s1", orjson.dumps({"sensor_id": "s1", "ts": t + 31 * 365 * 86400, "value": v})))
            if i == 300 and sid == "s2":  # a finite value that once blinded the sensor
                msgs.append((b"s2", orjson.dumps({"sensor_id": "s2", "ts": t + 1.0, "value": 1e300})))
            if i == 300 and sid == "s5":
                msgs.append((b"s5", orjson.dumps({"sensor_id": {"id": "s5"}, "ts": t + 1.0, "value": v})))
    produce(kafka, topic, msgs)
    cfg, port = worker_config(kafka, tmp_path, topic)
    w = run_worker(cfg, port)
    w.wait_metric("streamrnn_messages_consumed_total", len(msgs), timeout=120)
    w.wait_metric("streamrnn_dead_letters_total", 2)
    n_events = int(w.metric("streamrnn_alert_events_total"))
    alerts = [orjson.loads(r.value) for r in consume_all(kafka, f"{topic}-alerts", expect=n_events)]
    assert w.metric("streamrnn_dead_letters_total", {"reason": "future_timestamp"}) == 1
    assert w.metric("streamrnn_dead_letters_total", {"reason": "bad_sensor_id"}) == 1
    assert w.metric("streamrnn_alert_events_total", {"kind": "no_data", "event": "open"}) == 1
    assert w.terminate() == 0

    assert len(alerts) == n_events
    no_data = [(a["sensor_id"], a["event"]) for a in alerts if a["kind"] == "no_data"]
    assert no_data == [("s4", "open"), ("s4", "resolved")]
    opened, back = (a for a in alerts if a["kind"] == "no_data")
    assert base + 399 * step < opened["ts"] < base + 420 * step and back["ts"] == base + 700 * step
    assert back["opened_ts"] == opened["ts"]
    for sid, i in spike_at.items():  # each hostile input was followed by an anomaly that is still caught
        assert any(a["sensor_id"] == sid and a["kind"] == "anomaly" and a["event"] == "open"
                   and a["ts"] == base + i * step for a in alerts), sid
