"""Wide messages, tags, per-sensor alert rules and the evidence an alert names: the pure
core and the decoder, without Kafka (the broker and Alertmanager side is in
test_telemetry_kafka.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streamrnn.cli.score import score_readings
from streamrnn.config import ConfigError, parse_config
from streamrnn.core import AlertParams, BankParams, ScoringParams
from streamrnn.core.scoring import EVIDENCE
from streamrnn.daemon.sinks import tag_labels
from streamrnn.ingest.files import read_wide_csv
from streamrnn.ingest.messages import MessageDecoder, MessageParams, Reason
from streamrnn.lifecycle.serving import serving_detector

T0 = 1_700_000_000


def detector(**alerts: object):
    return serving_detector(None, None, scoring=ScoringParams(), alerts=AlertParams(**alerts), bank=BankParams())  # type: ignore[arg-type]


def series(n: int, seed: int, spike_at: int | None = None, spike: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = 20 + np.sin(np.arange(n) / 8.0) + rng.normal(0, 0.1, n)
    if spike_at is not None:
        v[spike_at] += spike
    return v


# -- decoder -------------------------------------------------------------------------------
WIDE = MessageParams(sensor_field="device", value_fields=["temp", "pressure", "rpm"], tag_fields=["site", "line"])


def test_a_wide_message_is_one_reading_per_good_field_with_the_message_time_and_tags() -> None:
    msgs = [
        {"device": "pump-7", "site": "north", "line": 3, "ts": T0, "temp": 71.2, "pressure": "3.4", "rpm": None},
        {"device": "pump-8", "ts": T0 + 60, "temp": "warm", "pressure": 3.5, "rpm": 1480, "site": {"bad": 1}},
    ]
    out = MessageDecoder(WIDE).decode([orjson.dumps(m) for m in msgs])
    assert out.sensor_ids == ["pump-7/temp", "pump-7/pressure", "pump-8/pressure", "pump-8/rpm"]
    assert out.index == [0, 0, 1, 1]
    assert out.ts == [T0, T0, T0 + 60, T0 + 60]
    assert out.values == [71.2, 3.4, 3.5, 1480.0]
    assert out.tags == [(("site", "north"), ("line", "3"))] * 2 + [()] * 2
    assert out.rejections == []
    assert out.bad_fields == {Reason.MISSING_FIELD: 1, Reason.NON_NUMERIC_VALUE: 1, Reason.BAD_TAG: 1}


def test_a_wide_message_without_a_good_field_is_rejected_once_with_the_first_reason() -> None:
    msgs = [b'{"device": "d", "ts": 1700000000, "temp": "x", "rpm": "nan"}',
            b'{"device": "d", "ts": "yesterday", "temp": 1, "rpm": 2}',
            b'{"device": "d", "temp": 1}']
    out = MessageDecoder(WIDE).decode(msgs)
    assert out.sensor_ids == []
    assert [(r.index, r.reason) for r in out.rejections] == [
        (0, Reason.NON_NUMERIC_VALUE), (1, Reason.BAD_TIMESTAMP), (2, Reason.MISSING_FIELD)]
    assert "ts" in out.rejections[2].detail and "temp" not in out.rejections[2].detail


def test_a_custom_separator_and_narrow_messages_keep_their_behaviour() -> None:
    out = MessageDecoder(MessageParams(sensor_field="device", value_fields=["a"], field_separator=":")).decode(
        [b'{"device": 7, "ts": 1700000000, "a": 1}'])
    assert out.sensor_ids == ["7:a"] and out.tags is None
    narrow = MessageDecoder(MessageParams(tag_fields=["site"])).decode(
        [b'{"sensor_id": "s", "ts": 1700000000, "value": 1, "temp": 5, "site": "x"}'])
    assert narrow.sensor_ids == ["s"] and narrow.tags == [(("site", "x"),)]


def test_a_tag_longer_than_the_id_bound_is_left_out() -> None:
    p = MessageParams(tag_fields=["site"], max_sensor_id_length=8)
    out = MessageDecoder(p).decode([orjson.dumps({"sensor_id": "s", "ts": T0, "value": 1, "site": "x" * 9})])
    assert out.tags == [()] and out.bad_fields == {Reason.BAD_TAG: 1}


# -- configuration -------------------------------------------------------------------------
def test_a_bad_override_names_its_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.overrides\[1\]\.threshold"):
        parse_config({"alerts": {"overrides": [{"match": "a*"}, {"match": "b*", "threshold": 2}]}})
    with pytest.raises(ConfigError, match=r"alerts\.overrides\[0\]\.thresold: unknown key"):
        parse_config({"alerts": {"overrides": [{"match": "a*", "thresold": 0.5}]}})
    with pytest.raises(ConfigError, match=r"alerts\.overrides\[0\]\.resolve_threshold"):
        parse_config({"alerts": {"overrides": [{"match": "a*", "resolve_threshold": 0.5}]}})
    with pytest.raises(ConfigError, match=r"alerts\.overrides\[0\]\.match"):
        parse_config({"alerts": {"overrides": [{"threshold": 0.5}]}})
    with pytest.raises(ConfigError, match=r"message\.value_fields"):
        parse_config({"message": {"value_fields": []}})


# -- per-sensor rules ----------------------------------------------------------------------
def test_overrides_silence_and_desensitise_what_they_match_first_match_wins() -> None:
    d = detector(overrides=[{"match": "rig-*", "enabled": False}, {"match": "*/vibration", "threshold": 0.9},
                            {"match": "*", "threshold": 0.3}])  # the sensors the two above take never get here
    n, at = 400, 300
    ids = ["plant/temp", "plant/vibration", "rig-1/vibration"]
    # a 12-sigma spike: surprise about 0.5, above the default 0.35 and below 0.9
    values = [series(n, seed, at, 1.2) for seed in range(3)]
    res = d.process([s for s in ids for _ in range(n)], np.tile(T0 + 60.0 * np.arange(n), 3), np.concatenate(values))
    opened = {e.sensor_id for e in res.events if e.event == "open"}
    surprise = res.surprise.reshape(3, n)[:, at]
    assert all(0.35 <= s < 0.9 for s in surprise), surprise
    assert res.is_anomaly.reshape(3, n)[2, at]  # scored and flagged, but never alerted
    assert "rig-1/vibration" not in opened and "plant/vibration" not in opened
    # the catch-all rule applies to plant/temp only: first match wins
    assert "plant/temp" in opened
    assert {e.threshold for e in res.events if e.sensor_id == "plant/temp"} == {0.3}


def test_a_disabled_sensor_raises_no_no_data_alert() -> None:
    ts = T0 + 60.0 * np.arange(80)
    no_data = {}
    for name, rules in (("default", []), ("disabled", [{"match": "quiet", "enabled": False}])):
        d = detector(overrides=rules)
        d.process(["quiet"] * 10 + ["loud"] * 10, np.concatenate([ts[:10], ts[:10]]), np.ones(20))
        res = d.process(["loud"] * 70, ts[10:], np.ones(70))  # 'quiet' is silent for 70 minutes
        no_data[name] = [e.sensor_id for e in res.events if e.kind == "no_data"]
    assert no_data == {"default": ["quiet"], "disabled": []}


def test_restored_sensors_follow_the_rules_of_the_new_configuration() -> None:
    old = detector(overrides=[{"match": "s*", "enabled": False}])
    old.process(["s1"], [T0], [1.0])
    rows = old.bank.pack(old.bank.held()[1])
    new = detector(overrides=[{"match": "x*", "enabled": False}, {"match": "s*", "threshold": 0.5}])
    slots = new.bank.unpack(["s1"], rows)
    new.adopt(slots, owner=0)
    assert int(new.bank["rule"][slots[0]]) == 2
    assert float(new.alerter.rules[2]["threshold"]) == 0.5


# -- evidence and tags on events -----------------------------------------------------------
def test_an_alert_names_its_strongest_evidence_and_its_probability() -> None:
    d = detector()
    n = 400
    spiked = series(n, 1, 300, 3.0)
    stuck = series(n, 2)
    stuck[250:] = stuck[250]
    res = d.process(["spike"] * n + ["stuck"] * n, np.tile(T0 + 60.0 * np.arange(n), 2), np.concatenate([spiked, stuck]))
    by = {(e.sensor_id, e.event.value): e for e in res.events}
    spike_open = by[("spike", "open")]
    assert spike_open.evidence in EVIDENCE and spike_open.evidence != "stuck"
    assert 0 < spike_open.evidence_p < 1e-6
    assert by[("stuck", "open")].evidence == "stuck"
    d_json = spike_open.to_dict()
    assert d_json["evidence"] == {"name": spike_open.evidence, "probability": spike_open.evidence_p}
    resolved = by[("spike", "resolved")]  # a resolve says what opened the alert
    assert resolved.evidence == spike_open.evidence


def test_alerts_carry_the_latest_tags_and_an_untagged_reading_keeps_them() -> None:
    d = detector()
    n = 400
    v = series(n, 3, 390, 3.0)
    ts = T0 + 60.0 * np.arange(n)
    north, south = (("site", "north"), ("line", "3")), (("site", "south"),)
    d.process(["s"] * 200, ts[:200], v[:200], tags=[north] * 200)
    d.process(["s"] * 100, ts[200:300], v[200:300], tags=[north] * 50 + [south] * 50)
    res = d.process(["s"] * 100, ts[300:], v[300:], tags=[()] * 100)
    opened = [e for e in res.events if e.event == "open"]
    assert opened and opened[0].tags == {"site": "south"}
    assert opened[0].to_dict()["tags"] == {"site": "south"}
    assert detector().process(["t"], [T0], [1.0]).tag_keys is None


def test_alertmanager_labels_from_tags_follow_label_name_rules() -> None:
    assert tag_labels({"site": "north", "line-no": "3", "9lives": "x", "__name__": "y", "zone.a": "z"}) == {
        "site": "north", "line_no": "3", "_9lives": "x", "tag__name__": "y", "zone_a": "z"}


# -- the offline command -------------------------------------------------------------------
def test_score_reads_the_wide_layout_one_row_per_reading(tmp_path: Path) -> None:
    n = 300
    rows = ["timestamp,device,site,temp,rpm"]
    temp, rpm = series(n, 4, 250, 3.0), series(n, 5) * 50
    for i in range(n):
        rows.append(f"{T0 + 60 * i},pump-7,north,{temp[i]},{'' if i == 10 else rpm[i]}")
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(rows) + "\n")
    readings = read_wide_csv(path, sensor_field="device", value_fields=["temp", "pressure", "rpm"], separator="/",
                             tag_fields=["site", "line"])
    assert len(readings) == 2 * n - 1  # the empty rpm cell is no reading
    assert readings.sensor_ids[:4] == ["pump-7/temp", "pump-7/rpm", "pump-7/temp", "pump-7/rpm"]
    assert readings.columns.column_names == ["sensor_id", "timestamp", "value", "site"]
    assert readings.tags is not None and set(readings.tags) == {(("site", "north"),)}
    d = detector()
    scored = score_readings(readings, d, batch_size=100)
    assert len(scored["anomaly_score"]) == 2 * n - 1
    spike_row = 2 * 250 - 1  # row 250's temp, after one missing rpm
    assert readings.sensor_ids[spike_row] == "pump-7/temp" and scored["surprise"][spike_row] >= 0.35
    assert d.tags.tags(int(d.bank["tag_set"][d.bank.assign(["pump-7/temp"])[0]])) == {"site": "north"}
