"""Plant telemetry through the real worker, broker and Alertmanager: wide messages with
tags -> alerts that carry tags and evidence -> Alertmanager groups them by a tag label;
per-sensor overrides silence and desensitise what they match; the scores topic holds
one record per scored reading; tags survive a restart."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streamrnn.config import parse_config
from streamrnn.devtools.broker import EmbeddedBroker
from streamrnn.ingest.messages import MessageDecoder
from streamrnn.lifecycle.serving import serving_detector

from .conftest import consume_all, produce, worker_config
from .ops import Alertmanager, WebhookReceiver

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000
N = 400
SPIKE_AT = 300
FIELDS = ["temp", "pressure", "vibration"]
DEVICES = {"pump-1": {"site": "north", "line": 1}, "pump-2": {"site": "north", "line": 2},
           "pump-3": {"site": "south", "line": 1}, "rig-1": {"site": "lab", "line": 0}}
# 12 sigma of the one-step noise: surprise about 0.5, above the default threshold, below 0.9
SPIKES = {"pump-1/temp", "pump-2/temp", "pump-3/pressure", "pump-3/vibration", "rig-1/temp"}
ALERTING = {"pump-1/temp", "pump-2/temp", "pump-3/pressure"}  # rig-* is disabled, */vibration needs 0.9
OVERRIDES = [{"match": "rig-*", "enabled": False}, {"match": "*/vibration", "threshold": 0.9}]


def plant_messages(start: int, stop: int, *, tagged: bool = True, spikes: set[str] = SPIKES, spike_at: int = SPIKE_AT,
                   spike: float = 1.2) -> list[tuple[bytes, bytes]]:
    """One wide message per device per minute; message 120 of pump-2 has a garbled pressure."""
    out = []
    for i in range(start, stop):
        for k, (device, tags) in enumerate(DEVICES.items()):
            msg: dict[str, object] = {"device": device, "ts": T0 + 60 * i, **(tags if tagged else {})}
            for j, f in enumerate(FIELDS):
                rng = np.random.default_rng([k, j, i])
                v = 20 + 5 * j + np.sin(i / 8.0 + j) + rng.normal(0, 0.1)
                if i == spike_at and f"{device}/{f}" in spikes:
                    v += spike
                msg[f] = round(float(v), 6)
            if device == "pump-2" and i == 120:
                msg["pressure"] = "n/a"
            out.append((device.encode(), orjson.dumps(msg)))
    return out


def test_wide_messages_with_tags_route_by_tag_honour_overrides_and_stream_scores(
        kafka: EmbeddedBroker, kafka_client: str, tmp_path, run_worker) -> None:
    topic = "plant"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1, f"{topic}-scores": 2})
    receiver = WebhookReceiver()
    am = Alertmanager(tmp_path / "am", receiver.url, group_by=("alertname", "site"))
    # the changelog store for one client and the local one for the other: tags survive the restart in both
    backend = "kafka" if kafka_client == "confluent-kafka" else "local"
    sections = dict(
        kafka={"scores_topic": f"{topic}-scores"},
        message={"sensor_field": "device", "value_fields": FIELDS, "tag_fields": ["site", "line"]},
        alerts={"log": False, "overrides": OVERRIDES,
                "sinks": [{"type": "alertmanager", "url": am.url, "resend_interval_seconds": 2}]},
        state={"backend": backend, "changelog_partitions": 2},
    )
    cfg, port = worker_config(kafka, tmp_path, topic, **sections)
    msgs = plant_messages(0, N)
    msgs.append((b"pump-9", orjson.dumps({"device": "pump-9", "ts": T0, "site": "x", "temp": "hot"})))  # no good field
    readings = 3 * N * len(DEVICES) - 1  # one garbled pressure
    w = run_worker(cfg, port)
    try:
        produce(kafka, topic, msgs)
        w.wait_metric("streamrnn_readings_scored_total", readings, timeout=120)
        assert w.metric("streamrnn_message_fields_rejected_total", {"reason": "non_numeric_value"}) == 2
        assert w.wait_metric("streamrnn_dead_letters_total", 1, labels={"reason": "non_numeric_value"}) == 1
        w.wait_metric("streamrnn_alert_events_total", len(ALERTING), labels={"event": "open"})

        # Alertmanager groups the two north pumps' alerts under the tag label site="north"
        def north_group(body: dict) -> bool:
            return body["groupLabels"].get("site") == "north" and len(body["alerts"]) >= 2
        north = receiver.wait_for(north_group, timeout=60)[0]
        assert {a["labels"]["sensor_id"] for a in north["alerts"]} == {"pump-1/temp", "pump-2/temp"}
        assert {a["labels"]["line"] for a in north["alerts"]} == {"1", "2"}
        assert all(a["annotations"]["evidence"].split(" ")[0] in ("residual", "run", "range", "time_of_day", "pattern")
                   for a in north["alerts"])
        south = receiver.wait_for(lambda b: b["groupLabels"].get("site") == "south", timeout=60)[0]
        assert [a["labels"]["sensor_id"] for a in south["alerts"]] == ["pump-3/pressure"]

        n_events = int(w.metric("streamrnn_alert_events_total"))
        events = [orjson.loads(r.value) for r in consume_all(kafka, f"{topic}-alerts", expect=n_events)]
        scores = consume_all(kafka, f"{topic}-scores", expect=readings, timeout=60)
        assert w.metric("streamrnn_scores_published_total") == readings
        assert w.terminate() == 0
    finally:
        am.close()
        receiver.close()

    # alerts: the spiked sensors that alert open at the spike, each with its device's tags and evidence;
    # disabled and desensitised sensors raise nothing
    opens = [e for e in events if e["event"] == "open"]
    assert {e["sensor_id"] for e in opens} == ALERTING
    for e in opens:
        device = e["sensor_id"].split("/")[0]
        assert e["ts"] == T0 + 60 * SPIKE_AT
        assert e["tags"] == {k: str(v) for k, v in DEVICES[device].items()}
        assert e["evidence"]["name"] in ("residual", "run", "range", "time_of_day", "pattern")
        assert 0 < e["evidence"]["probability"] < 1e-4
    assert not [e for e in events if e["sensor_id"].startswith("rig-") or e["sensor_id"].endswith("/vibration")]
    # the same stream offline, by the worker's own decoder and detector, gives the same events
    conf = parse_config(yaml_sections(sections))
    det = serving_detector(None, None, scoring=conf.scoring, alerts=conf.alerts, bank=conf.state)
    dec = MessageDecoder(conf.message).decode([m for _, m in msgs])
    offline = det.process(dec.sensor_ids, dec.ts, dec.values, tags=dec.tags)
    assert sorted((e["sensor_id"], e["ts"], e["event"]) for e in events) == sorted(
        (e.sensor_id, e.ts, e.event.value) for e in offline.events)

    # scores: exactly one record per scored reading, keyed by sensor, with the band around the forecast
    records = [orjson.loads(r.value) for r in scores]
    assert len(records) == readings
    assert {(r["sensor_id"], r["ts"]) for r in records} == set(zip(dec.sensor_ids, dec.ts, strict=True))
    assert all(r.key == rec["sensor_id"].encode() for r, rec in zip(scores, records, strict=True))
    banded = [r for r in records if r["forecast"] is not None]
    assert len(banded) == readings - 3 * len(DEVICES)  # every reading after a sensor's first has a forecast
    assert all(r["lower"] <= r["forecast"] <= r["upper"] and 0 <= r["anomaly_score"] <= 1 for r in banded)
    assert {r["model_version"] for r in records} == {"default-1"}
    assert all(r["tags"] == {k: str(v) for k, v in DEVICES[r["sensor_id"].split("/")[0]].items()} for r in records)

    # restart: untagged messages with a new spike; the alert carries the tags saved with the state
    w = run_worker(cfg, port)
    # (50 sigma: a sensor's first spike desensitises it for a while, an open detection-quality finding)
    more = plant_messages(N, N + 60, tagged=False, spikes={"pump-3/pressure"}, spike_at=N + 40, spike=5.0)
    produce(kafka, topic, more)
    w.wait_metric("streamrnn_readings_scored_total", len(more) * 3, timeout=120)
    w.wait_metric("streamrnn_alert_events_total", 1, labels={"event": "open"})
    total = len(events) + int(w.metric("streamrnn_alert_events_total"))
    later = [orjson.loads(r.value) for r in consume_all(kafka, f"{topic}-alerts", expect=total)][len(events):]
    assert w.terminate() == 0
    reopened = [e for e in later if e["sensor_id"] == "pump-3/pressure" and e["event"] == "open"]
    assert reopened and reopened[0]["tags"] == {"site": "south", "line": "1"}


def yaml_sections(sections: dict) -> dict:
    """The sections of the worker config the offline check needs (no broker or sinks)."""
    alerts = {k: v for k, v in sections["alerts"].items() if k != "sinks"}
    return {"message": sections["message"], "alerts": alerts}
