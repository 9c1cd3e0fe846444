"""Operations against the real tools: promtool, Prometheus scraping a worker, Alertmanager."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from streamrnn.devtools.broker import EmbeddedBroker, free_port
from streamrnn.config import AlertsConfig
from streamrnn.devtools.fleet import SensorFleet

from .conftest import as_messages, produce, worker_config
from .ops import Alertmanager, Prometheus, WebhookReceiver, require

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.kafka


def dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "streamrnn.json").read_text())
    return [t["expr"].replace("$__rate_interval", "1m") for p in dash["panels"] for t in p["targets"]]


def rule_queries() -> list[tuple[str, str]]:
    """(name, query): recording rules by their name, alerting rules by the left side of their comparison."""
    out = []
    for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]:
        for r in g["rules"]:
            if "record" in r:
                out.append((r["record"], r["record"]))
            else:
                left = re.split(r"\s(?:==|!=|>=|<=|>|<)\s[^\s]+$", r["expr"])[0]
                out.append((r["alert"], left))
    return out


def test_promtool_checks_and_rule_unit_tests_pass() -> None:
    promtool = require("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        p = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "SUCCESS" in p.stdout + p.stderr
    amtool = require("amtool")
    p = subprocess.run([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_dashboard_query_and_rule_returns_data(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "ops"
    kafka.create_topics({topic: 3, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    hook = WebhookReceiver()
    dead_port = free_port()  # nothing listens here: that sink drops
    fleet = SensorFleet(20, seed=4, anomaly_rate=0.003, clean_ticks=120, min_gap=100)
    df = fleet.frame(600)
    msgs = as_messages(df) + [(b"bad", b"not json"), (b"bad", b'{"sensor_id": "x", "ts": 1, "value": "high"}')]
    cfg, port = worker_config(kafka, tmp_path, topic, metrics={"top_sensors": 5, "top_sensors_interval_seconds": 0.5},
                              alerts={"sinks": [{"type": "webhook", "url": hook.url, "name": "hook"},
                                                {"type": "webhook", "url": f"http://127.0.0.1:{dead_port}/", "name": "dead",
                                                 "max_retries": 1, "backoff_initial_seconds": 0.05, "timeout_seconds": 1}]})
    prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], rules=DEPLOY / "prometheus" / "rules.yml")
    w = run_worker(cfg, port)
    try:
        produce(kafka, topic, msgs)
        w.wait_metric("streamrnn_readings_scored_total", len(df), timeout=90)
        assert w.metric("streamrnn_alert_events_total", {"event": "open"}) > 0
        w.wait_metric("streamrnn_alert_sink_dropped_total", 1, labels={"sink": "dead"})
        prom.wait_for('up{job="streamrnn"} == 1')
        time.sleep(3)  # a few scrapes after the stream, so rates and increases have two points
        missing = []
        for expr in dashboard_queries():
            if not _wait_nonempty(prom, expr):
                missing.append(expr)
        for name, expr in rule_queries():
            if not _wait_nonempty(prom, expr):
                missing.append(f"{name}: {expr}")
        assert missing == []
        # the values are the worker's own numbers
        scored = float(prom.query("sum(streamrnn_readings_scored_total)")[0]["value"][1])
        assert scored == len(df)
        top = prom.query("streamrnn_top_sensor_anomaly_score")
        assert 0 < len(top) <= 5
        assert hook.received and all("severity" in b and b["event"] in ("open", "resolved") for b in hook.received)
    finally:
        prom.close()
        hook.close()


def _wait_nonempty(prom: Prometheus, expr: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.query(expr):
            return True
        time.sleep(0.5)
    return False


def test_alertmanager_receives_the_alert_and_its_resolution(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "am"
    kafka.create_topics({topic: 1, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    receiver = WebhookReceiver()
    am = Alertmanager(tmp_path / "am", receiver.url)
    n = 400
    v = 10 + np.sin(np.arange(n + 40) / 8.0)
    v[n] += 25.0  # the spike
    msg = lambda i: (b"pump-1", orjson.dumps({"sensor_id": "pump-1", "ts": 1_700_000_000 + 60 * i, "value": float(v[i])}))  # noqa: E731
    cfg, port = worker_config(kafka, tmp_path, topic, alerts={
        "resolve_after": 5, "sinks": [{"type": "alertmanager", "url": am.url, "labels": {"site": "test"}, "resend_interval_seconds": 2}]})
    w = run_worker(cfg, port)
    try:
        produce(kafka, topic, [msg(i) for i in range(n + 1)])  # up to and including the spike: the alert opens
        w.wait_metric("streamrnn_alert_events_total", 1, labels={"event": "open"}, timeout=90)
        firing = receiver.wait_for(lambda b: b["status"] == "firing")
        a = firing[0]["alerts"][0]
        assert a["labels"]["alertname"] == "StreamrnnAnomaly" and a["labels"]["sensor_id"] == "pump-1"
        assert a["labels"]["site"] == "test" and a["labels"]["severity"] in ("warning", "critical")
        assert float(a["annotations"]["value"]) == pytest.approx(v[n], rel=1e-5)
        assert "forecast" in a["annotations"] and float(a["annotations"]["anomaly_score"]) >= AlertsConfig().threshold
        assert [x for x in am.alerts() if x["labels"]["sensor_id"] == "pump-1"]

        produce(kafka, topic, [msg(i) for i in range(n + 1, n + 40)])  # back to normal: it resolves
        w.wait_metric("streamrnn_alert_events_total", 1, labels={"event": "resolved"}, timeout=60)
        resolved = receiver.wait_for(lambda b: b["status"] == "resolved")
        assert resolved[0]["alerts"][0]["labels"]["sensor_id"] == "pump-1"
        assert resolved[0]["alerts"][0]["endsAt"] > resolved[0]["alerts"][0]["startsAt"]
        assert w.metric("streamrnn_alert_sink_dropped_total") == 0
        assert w.terminate() == 0
    finally:
        am.close()
        receiver.close()


def test_a_dead_webhook_drops_and_counts_without_stopping_scoring(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "deadhook"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    fleet = SensorFleet(20, seed=12, anomaly_rate=0.004, clean_ticks=100, min_gap=60)
    df = fleet.frame(800)
    cfg, port = worker_config(kafka, tmp_path, topic, logging={"format": "json"}, alerts={"log": True, "sinks": [
        {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/nothing-here", "name": "dead", "max_retries": 2,
         "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2, "timeout_seconds": 1, "max_queue": 5}]})
    w = run_worker(cfg, port)
    produce(kafka, topic, as_messages(df))
    w.wait_metric("streamrnn_readings_scored_total", len(df), timeout=90)
    events = w.metric("streamrnn_alert_events_total")
    assert events > 5
    w.wait_metric("streamrnn_alert_sink_dropped_total", events, labels={"sink": "dead"}, timeout=60)
    assert w.metric("streamrnn_alert_sink_sent_total") == 0
    dropped = w.metric("streamrnn_alert_sink_dropped_total", {"sink": "dead"})
    assert dropped == events  # every notification is accounted for: none delivered, none lost silently
    assert w.terminate() == 0
    # logging.format json: one object per line; alert lines carry sensor, partition and model
    lines = [json.loads(ln) for ln in w.log().splitlines() if ln.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    alert_lines = [x for x in lines if x["logger"] == "streamrnn.alerts"]
    assert len(alert_lines) == events
    assert all(x["partition"] in (0, 1) and x["model_version"] == "default-1" and x["sensor_id"] for x in alert_lines)
