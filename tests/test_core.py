"""The transport-free core: state continuity, batching, state bank, scoring and alerts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from streamrnn.core import Alerter, AlertParams, BankParams, Detector, GRUForecaster, ScoringParams, StateBank
from streamrnn.lifecycle.artifacts import default_model_path, load_model
from streamrnn.core.alerts import OPENED, RESOLVED, alert_step
from streamrnn.core.state import Column
from streamrnn.devtools.fleet import SensorFleet


@pytest.fixture(scope="module")
def model_file():
    return load_model(default_model_path())


def make_detector(model_file, **alert_kw) -> Detector:
    return Detector(model_file.model, version=model_file.version, alerts=AlertParams(**alert_kw) if alert_kw else None)


@pytest.fixture(scope="module")
def stream():
    fleet = SensorFleet(12, seed=3, anomaly_rate=0.004, clean_ticks=100, min_gap=50)
    return fleet.frame(300)


def run_in_batches(det: Detector, df, cuts: list[int]):
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(df))), len(df)]
    scores, forecasts, events = [], [], []
    for a, b in zip(bounds, bounds[1:]):
        part = df.iloc[a:b]
        r = det.process(part.sensor_id.tolist(), part.ts.to_numpy(), part.value.to_numpy())
        scores.append(r.score)
        forecasts.append(r.forecast)
        events += [(e.sensor_id, e.ts, e.event) for e in r.events]
    return np.concatenate(scores), np.concatenate(forecasts), events


def test_one_batch_or_many_gives_the_same_scores(model_file, stream) -> None:
    s1, f1, e1 = run_in_batches(make_detector(model_file, warmup_readings=20), stream, [])
    s2, f2, e2 = run_in_batches(make_detector(model_file, warmup_readings=20), stream, list(range(0, len(stream), 7)))
    assert np.isfinite(s1[12:]).all()
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)
    assert e1 == e2 and len(e1) > 0


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3599), max_size=12))
def test_any_batch_split_gives_the_same_scores(model_file, stream, cuts) -> None:
    ref, _, ref_events = run_in_batches(make_detector(model_file), stream, [])
    got, _, events = run_in_batches(make_detector(model_file), stream, cuts)
    np.testing.assert_allclose(ref, got, rtol=1e-5, atol=1e-6)
    assert ref_events == events


def test_scoring_makes_no_torch_call_and_its_gru_step_agrees_with_torch(model_file, stream) -> None:
    import torch

    from streamrnn.core.forecaster import gru_step, scratch_for, weights_of

    det = make_detector(model_file)
    calls = []
    handle = det.model.gru.register_forward_hook(lambda *a: calls.append(1))
    try:
        for a in range(0, 3600, 1200):
            part = stream.iloc[a:a + 1200]  # 12 sensors x 100 readings each
            det.process(part.sensor_id.tolist(), part.ts.to_numpy(), part.value.to_numpy())
    finally:
        handle.remove()
    assert calls == []  # one compiled pass per batch; torch trains, it does not score
    # the compiled step is torch's GRU to float32 rounding, over a long sequence
    x = np.random.default_rng(0).normal(scale=3.0, size=(1, 2000, 6)).astype(np.float32)
    with torch.no_grad():
        mean, logvar, h_n = model_file.model(torch.from_numpy(x))
    w = weights_of(model_file.model)
    scratch = scratch_for(w)
    h = np.zeros(model_file.model.state_size, np.float32)
    steps = np.array([gru_step(h, x[0, t], w, scratch) for t in range(x.shape[1])])
    np.testing.assert_allclose(steps[:, 0], mean.numpy()[0], atol=1e-5)
    np.testing.assert_allclose(steps[:, 1], logvar.numpy()[0], atol=1e-5)
    np.testing.assert_allclose(h, h_n.numpy()[0], atol=1e-5)


def test_replays_and_duplicates_are_not_scored(model_file) -> None:
    det = make_detector(model_file)
    r = det.process(["a", "a", "a", "b"], [10.0, 30.0, 20.0, 5.0], [1.0, 3.0, 2.0, 7.0])
    assert r.accepted.all()  # within a batch readings are ordered by time
    r = det.process(["a", "a", "a", "b", "b"], [30.0, 25.0, 31.0, 6.0, 6.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert r.accepted.tolist() == [False, False, True, True, False]
    assert np.isnan(r.score[~r.accepted]).all()
    assert det.bank.row("a")["last_ts"] == 31.0
    assert det.bank.row("a")["count"] == 4


def test_state_bank_grows_and_evicts_least_recently_seen() -> None:
    bank = StateBank([Column("x", "float64", 0.0)], max_sensors=6, initial_capacity=2)
    s = bank.assign(["a", "b", "c"])
    assert bank.capacity >= 3 and len(set(s.tolist())) == 3
    bank["x"][s] = [1.0, 2.0, 3.0]
    bank.assign(["d", "e", "f"])
    bank.assign(["a"])  # a is now the most recent of the first three
    bank.assign(["g", "h"])
    assert "a" in bank and "b" not in bank and "c" not in bank
    assert bank.evicted_total == 2 and len(bank) == 6
    assert bank.row("a")["x"] == 1.0
    assert bank.row("g")["x"] == 0.0  # a reused slot starts fresh


def test_rows_of_an_older_layout_keep_what_still_means_the_same() -> None:
    old = StateBank([Column("x", "float64", 0.0), Column("q", "int16", 0, (3,)), Column("n", "int64", 0)],
                    max_sensors=4, initial_capacity=4)
    s = old.assign(["a"])
    old["x"][s], old["q"][s], old["n"][s] = 0.1, [[300, -300, 7]], 5
    new = StateBank([Column("x", "float32", 0.0), Column("q", "int8", 0, (3,)), Column("n", "int64", 0),
                     Column("y", "float64", 2.0)], max_sensors=4, initial_capacity=4)
    new.unpack(["a"], old.pack(s))
    row = new.row("a")
    # a float narrows; fixed point of another width starts fresh instead of wrapping
    assert row["x"] == np.float32(0.1) and row["n"] == 5 and row["y"] == 2.0
    assert row["q"].tolist() == [0, 0, 0]


def test_more_sensors_in_a_batch_than_the_bank_holds_still_scores(model_file) -> None:
    det = Detector(model_file.model, bank=BankParams(max_sensors=4, initial_capacity=2))
    r = det.process([f"s{i}" for i in range(10)], np.arange(10.0), np.ones(10))
    assert r.accepted.all() and len(det.bank) <= 4


def test_snapshot_restore_continues_identically(model_file, stream) -> None:
    a = make_detector(model_file)
    head, tail = stream.iloc[:1800], stream.iloc[1800:]
    a.process(head.sensor_id.tolist(), head.ts.to_numpy(), head.value.to_numpy())
    b = make_detector(model_file)
    ids, slots = a.bank.held()
    assert len(b.bank.unpack(ids, a.bank.pack(slots))) == 12
    ra = a.process(tail.sensor_id.tolist(), tail.ts.to_numpy(), tail.value.to_numpy())
    rb = b.process(tail.sensor_id.tolist(), tail.ts.to_numpy(), tail.value.to_numpy())
    np.testing.assert_array_equal(ra.score, rb.score)
    np.testing.assert_array_equal(ra.forecast, rb.forecast)


def sine(n: int, period: int = 60, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 + np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0, noise, n)


def test_a_spike_scores_high_and_normal_readings_do_not(model_file) -> None:
    det = make_detector(model_file)
    v = sine(1500)
    v[1200] += 5.0
    r = det.process(["p"] * len(v), np.arange(len(v)) * 60.0, v)
    assert r.score[1200] >= 0.5
    assert ((r.score[:1200] >= 0.0) & (r.score[:1200] <= 1.0)).all()
    assert np.quantile(r.score[200:1200], 0.99) < 0.3
    assert [(e.event, e.ts) for e in r.events][:1] == [("open", 1200 * 60.0)]


def gappy_sine(n: int, every: int = 97, missed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """A smooth cycle sampled each minute, with ``missed`` minutes lost every ``every`` readings."""
    minute = np.arange(n) + np.arange(n) // every * missed
    return minute * 60.0, sine(minute[-1] + 1)[minute]


def test_a_reading_after_a_gap_is_judged_by_the_steps_it_missed(model_file) -> None:
    ts, v = gappy_sine(3000)
    late = np.flatnonzero(np.diff(ts) > 120) + 1
    spike = 2600  # an on-time reading, 20 noise deviations off
    assert spike not in late
    v[spike] += 1.0
    r = make_detector(model_file).process(["p"] * len(v), ts, v)
    as_on_time = Detector(model_file.model, scoring=ScoringParams(late_after=0)).process(["p"] * len(v), ts, v)
    settled = late[late > 300]
    # judged as one-step errors, some jumps over the gaps look like anomalies, and all of
    # them teach the sensor that errors that size are common, which hides the spike
    assert (as_on_time.surprise[settled] >= 0.35).mean() >= 0.05
    assert as_on_time.surprise[spike] < 0.5
    # judged per step missed they are ordinary and teach nothing
    assert (r.surprise[settled] >= 0.35).mean() <= 0.02
    assert r.surprise[spike] >= 0.5


def test_a_flat_sensor_that_comes_alive_after_a_gap_is_still_flagged(model_file) -> None:
    ts = np.arange(1500) * 60.0
    ts[1200:] += 3600.0
    v = 5.0 + np.random.default_rng(1).normal(0, 0.01, len(ts))
    v[1200:] += 3.0
    r = make_detector(model_file).process(["p"] * len(v), ts, v)
    assert r.surprise[1200] >= 0.5


def test_a_stuck_sensor_is_flagged(model_file) -> None:
    det = make_detector(model_file)
    v = sine(1000)
    v[700:800] = v[700]
    r = det.process(["p"] * len(v), np.arange(len(v)) * 60.0, v)
    # the surprise stays high while the sensor is stuck; the anomaly score marks the onset once
    assert r.surprise[760] >= 0.5
    onset = np.flatnonzero(r.score[700:800] >= 0.5)
    assert len(onset) >= 1 and 700 + onset[0] <= 760
    assert any(e.event == "open" and 700 * 60 <= e.ts <= 760 * 60 for e in r.events)


def test_alerter_warmup_hysteresis_and_cooldown() -> None:
    al = Alerter(AlertParams(threshold=0.9, resolve_threshold=0.5, warmup_readings=3, open_after=2, resolve_after=2,
                             cooldown_seconds=100))
    bank = StateBank(al.columns(), max_sensors=1, initial_capacity=1)
    slot = bank.assign(["s"])
    scores = [1, 1, 1, 1, 0.95, 0.7, 0.4, 0.95, 0.3, 0.2, 1, 1, 1, 1, 0.1, 0.1, 1, 1]
    ts = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 200, 201, 202, 203, 204, 205]
    events = []
    for i, (s, t) in enumerate(zip(scores, ts)):
        _, event = alert_step(bank.rows[slot[0]], float(t), float(s), i + 1, al.rules[0])
        events += [("open", t)] * (event == OPENED) + [("resolved", t)] * (event == RESOLVED)
    # no alert in warm-up (readings 1-3), opens after 2 high readings, 0.7 and 0.95 keep it open (hysteresis),
    # resolves after 2 readings below 0.5; the cooldown (100 s) holds back t=10 and t=20, so the
    # next alert opens at t=200; it resolves at t=203 and the new cooldown holds back t=204..205
    assert events == [("open", 4), ("resolved", 9), ("open", 200), ("resolved", 203)]


def test_the_core_imports_no_kafka() -> None:
    code = "import sys, streamrnn.core, streamrnn.cli.score; print(any(m == 'kafka' or m.startswith('kafka.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_sensor_gets_no_score_until_it_has_a_forecast(model_file) -> None:
    det = make_detector(model_file)
    r = det.process(["new"], [1.0], [5.0])
    assert r.score[0] == 0.0 and np.isnan(r.forecast[0])
    r = det.process(["new"], [2.0], [5.0])
    assert np.isfinite(r.forecast[0])


def test_gru_forecaster_state_size() -> None:
    m = GRUForecaster(hidden_size=8, num_layers=2)
    assert m.state_size == 16


def test_the_shipped_model_loads_and_its_checksum_matches(tmp_path) -> None:
    import hashlib

    from streamrnn.lifecycle.artifacts import ModelFileError

    path = default_model_path()
    digest = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    mf = load_model(path)
    assert mf.sha256 == digest and mf.version == "default-1"
    assert "synthetic" in mf.meta["trained_on"]
    bad = tmp_path / "m.pt"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    (tmp_path / "m.pt.sha256").write_text(digest + "  m.pt\n")
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(bad)
