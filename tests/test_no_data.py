"""A sensor that stops reporting raises one no_data alert, resolved when it reports again."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamrnn.core import AlertKind, AlertParams, Detector, Transition
from streamrnn.lifecycle.artifacts import default_model_path, load_model

STEP = 10.0


@pytest.fixture(scope="module")
def model_file():
    return load_model(default_model_path())


def fleet_with_a_gap(*, gap: tuple[float, float], silent: str = "s1", n_sensors: int = 4, end: float = 4000.0) -> pd.DataFrame:
    """Readings every STEP seconds from n sensors, time-ordered; ``silent`` sends none inside ``gap``."""
    rng = np.random.default_rng(5)
    t = np.arange(0.0, end, STEP)
    frames = []
    for k in range(n_sensors):
        sid = f"s{k}"
        keep = ~((t > gap[0]) & (t < gap[1])) if sid == silent else np.ones(len(t), bool)
        frames.append(pd.DataFrame({"sensor_id": sid, "ts": t[keep] + 0.01 * k,
                                    "value": 20 + np.sin(t[keep] / 300) + rng.normal(0, 0.05, keep.sum())}))
    return pd.concat(frames).sort_values("ts", kind="stable").reset_index(drop=True)


def events_of(det: Detector, df: pd.DataFrame, batch: int) -> list[tuple[str, str, str, float, float]]:
    out = []
    for a in range(0, len(df), batch):
        part = df.iloc[a:a + batch]
        r = det.process(part.sensor_id.tolist(), part.ts.to_numpy(), part.value.to_numpy())
        out += [(e.sensor_id, e.kind.value, e.event.value, e.ts, e.opened_ts) for e in r.events if e.kind is AlertKind.NO_DATA]
    return out


@pytest.mark.parametrize("batch", [1, 37, 100_000])
def test_a_silent_sensor_opens_one_no_data_alert_and_resolves_on_return(model_file, batch: int) -> None:
    df = fleet_with_a_gap(gap=(1500.0, 2600.0))
    det = Detector(model_file.model, alerts=AlertParams(no_data_factor=10, no_data_min_seconds=60))
    got = events_of(det, df, batch)
    # typical interval 10 s: silent once its last reading (1500) is 100 s old
    assert [(s, k, e) for s, k, e, _, _ in got] == [("s1", "no_data", "open"), ("s1", "no_data", "resolved")]
    (_, _, _, t_open, since_open), (_, _, _, t_back, since_back) = got
    assert t_open == pytest.approx(1600.01, abs=0.5) and since_open == t_open
    assert t_back == pytest.approx(2600.01) and since_back == t_open  # the resolve names when it began


def test_no_data_events_do_not_depend_on_batching(model_file) -> None:
    df = fleet_with_a_gap(gap=(1200.0, 3000.0), silent="s2")
    runs = [events_of(Detector(model_file.model), df, b) for b in (1, 13, 500, 100_000)]
    assert runs[0] and all(r == runs[0] for r in runs)


def test_the_minimum_age_and_the_off_switch(model_file) -> None:
    df = fleet_with_a_gap(gap=(1500.0, 1700.0))  # 200 s: 20 intervals, but under a 300 s minimum
    assert events_of(Detector(model_file.model, alerts=AlertParams(no_data_min_seconds=300)), df, 50) == []
    assert len(events_of(Detector(model_file.model, alerts=AlertParams(no_data_min_seconds=60)), df, 50)) == 2
    assert events_of(Detector(model_file.model, alerts=AlertParams(no_data_factor=0)), df, 50) == []


def test_silence_is_measured_against_event_time_not_the_wall_clock(model_file) -> None:
    # Readings of long ago, replayed now: nothing is silent while the stream keeps its pace.
    df = fleet_with_a_gap(gap=(0.0, 0.0))
    df["ts"] += 1e9
    assert events_of(Detector(model_file.model), df, 64) == []


def test_no_data_alert_as_published(model_file) -> None:
    df = fleet_with_a_gap(gap=(1500.0, 2600.0))
    det = Detector(model_file.model)
    events = []
    for a in range(0, len(df), 200):
        part = df.iloc[a:a + 200]
        events += det.process(part.sensor_id.tolist(), part.ts.to_numpy(), part.value.to_numpy()).events
    opened = next(e for e in events if e.kind is AlertKind.NO_DATA and e.event is Transition.OPEN)
    d = opened.to_dict()
    assert d["kind"] == "no_data" and d["event"] == "open" and d["sensor_id"] == "s1"
    assert d["forecast"] is None and d["anomaly_score"] is None  # nothing to forecast or score
    assert d["value"] == pytest.approx(df[(df.sensor_id == "s1") & (df.ts < 1501)].value.iloc[-1])
    assert all(e.to_dict()["kind"] == "anomaly" for e in events if e.kind is AlertKind.ANOMALY)
    assert det.bank.row("s1")["silent_since"] != det.bank.row("s1")["silent_since"]  # NaN: none open now


def test_alertmanager_gets_a_no_data_alert_of_its_own_name_kind_and_severity(model_file) -> None:
    from streamrnn.config import AlertsConfig, SinkConfig
    from streamrnn.daemon.metrics import WorkerMetrics
    from streamrnn.daemon.sinks import AlertmanagerSink

    df = fleet_with_a_gap(gap=(1500.0, 2600.0))
    det = Detector(model_file.model)
    events = det.process(df.sensor_id.tolist(), df.ts.to_numpy(), df.value.to_numpy()).events
    opened = next(e for e in events if e.kind is AlertKind.NO_DATA)
    sink = AlertmanagerSink(SinkConfig(type="alertmanager", url="http://127.0.0.1:9"), WorkerMetrics(),
                            AlertsConfig(no_data_severity="page"))
    try:
        (alert,) = sink.payload(opened)
    finally:
        sink.close(timeout=1.0)
    assert alert["labels"]["alertname"] == "StreamrnnNoData" and alert["labels"]["kind"] == "no_data"
    assert alert["labels"]["severity"] == "page" and "anomaly_score" not in alert["annotations"]
    assert "no reading since" in alert["annotations"]["summary"]
