"""Retraining and the model lifecycle: registry, validation gate, hot swap, CLI, worker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import torch

from streamrnn.devtools.broker import EmbeddedBroker
from streamrnn.config import parse_config
from streamrnn.core import Detector
from streamrnn.lifecycle.artifacts import default_model_path, load_model
from streamrnn.lifecycle.artifacts import ModelFileError
from streamrnn.daemon.metrics import WorkerMetrics
from streamrnn.lifecycle.registry import ModelRegistry, RegistryError
from streamrnn.lifecycle.retraining import Retrainer

from .conftest import produce, worker_config

ROOT = Path(__file__).resolve().parent.parent
S = 24


def regime_b(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A regime the shipped model has not seen: fast oscillation, period 7 readings."""
    return 50 + 10 * np.sin(2 * np.pi * t[None, :] / 7 + np.arange(S)[:, None] * 0.3) + rng.normal(0, 0.3, (S, len(t)))


def feed(det: Detector, values: np.ndarray, t0: int) -> np.ndarray:
    ids = [f"s{i}" for i in range(S)]
    out = []
    for k in range(values.shape[1]):
        r = det.process(ids, np.full(S, 60.0 * (t0 + k)), values[:, k])
        out.append(np.abs(r.residual))
    return np.array(out)


def fresh_detector() -> Detector:
    mf = load_model(default_model_path())
    return Detector(mf.model, version=mf.version)


def training_cfg(**kw):
    return parse_config({"training": {"min_improvement": 0.0, "max_seconds": 20, **kw}}).training


def test_registry_publish_load_prune_and_fallback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", keep=3)
    model = load_model(default_model_path()).model
    metas = [reg.publish(model, parent="default-1" if i == 0 else f"v{i}", val_loss=-0.5 - i) for i in range(4)]
    assert [m.version for m in metas] == ["v1", "v2", "v3", "v4"] and reg.current() == "v4"
    assert [m.version for m in reg.versions()] == ["v2", "v3", "v4"]  # only the last 3 kept
    assert not (tmp_path / "models" / "v1.pt").exists()
    assert reg.load("v3").sha256 == reg.meta("v3").sha256

    # a corrupt serving file: logged, and the newest older good version is served
    p = tmp_path / "models" / "v4.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        reg.load("v4")
    assert reg.load_serving().version == "v3"

    reg.set_current("v2")  # rollback
    assert reg.current() == "v2" and reg.load_serving().version == "v2"
    with pytest.raises(ModelFileError):
        reg.set_current("v4")  # a corrupt version cannot become current
    with pytest.raises(RegistryError):
        reg.set_current("v9")


def test_drift_retrain_is_promoted_and_residuals_fall(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    det = fresh_detector()
    before = feed(det, regime_b(np.arange(300), rng), 0)
    metrics = WorkerMetrics()
    reg = ModelRegistry(tmp_path / "models", keep=5)
    rt = Retrainer(training_cfg(), reg, metrics)
    job = rt.make_job(det)
    assert job is not None and job.window["sensors"] == S
    assert rt.run(job) == "promoted"
    model, version = rt.take_promoted()
    assert version == "v1" and reg.current() == "v1"
    meta = reg.meta("v1")
    assert meta.parent == "default-1" and meta.val_loss < meta.parent_val_loss and meta.training_window["sensors"] == S
    assert det.swap_model(model, version) == S
    after = feed(det, regime_b(np.arange(300, 500), rng), 300)
    mae_before, mae_after = np.nanmean(before[200:]), np.nanmean(after[20:])
    print(f"\ndrift: MAE {mae_before:.3f} before promotion, {mae_after:.3f} after")
    assert mae_after < 0.8 * mae_before
    samples = {s.labels.get("result"): s.value for s in metrics.retrain_runs.collect()[0].samples if s.name.endswith("_total")}
    assert samples == {"promoted": 1.0, "rejected": 0.0, "failed": 0.0}


def test_a_worse_candidate_is_rejected_and_the_version_stays(tmp_path: Path) -> None:
    det = fresh_detector()
    feed(det, regime_b(np.arange(200), np.random.default_rng(1)), 0)
    reg = ModelRegistry(tmp_path / "models", keep=5)
    rt = Retrainer(training_cfg(min_improvement=50.0, max_epochs=2), reg, WorkerMetrics())
    assert rt.run(rt.make_job(det)) == "rejected"
    assert rt.take_promoted() is None and reg.versions() == [] and det.model_version == "default-1"


def test_a_failing_run_is_counted_and_scoring_goes_on(tmp_path: Path) -> None:
    det = fresh_detector()
    feed(det, regime_b(np.arange(200), np.random.default_rng(2)), 0)
    metrics = WorkerMetrics()
    rt = Retrainer(training_cfg(max_epochs=2), ModelRegistry(tmp_path / "models", keep=5), metrics)
    job = rt.make_job(det)
    with torch.no_grad():
        job.serving.head.bias.fill_(float("nan"))  # a broken start model: the loss is NaN
    assert rt.run(job) == "failed"
    assert metrics.retrain_runs.labels(result="failed")._value.get() == 1
    r = det.process(["s0"], [60.0 * 1000], [50.0])
    assert np.isfinite(r.score).all()


def test_model_cli_list_show_rollback_and_train(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state:\n  dir: {tmp_path / 'state'}\ntraining:\n  min_improvement: 0.0\n  max_seconds: 15\n  max_epochs: 3\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "streamrnn", *a, "--config", str(cfg)],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "no model versions" in run("model", "list").stdout

    rng = np.random.default_rng(3)
    t = np.arange(900)
    rows = [{"sensor_id": f"s{i}", "timestamp": 1_700_000_000 + 60 * k, "value": v}
            for i, series in enumerate(regime_b(t, rng)[:6]) for k, v in enumerate(series.round(4))]
    data = tmp_path / "history.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    for _ in range(2):
        p = run("train", "--input", str(data))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "published v" in p.stdout
    listing = run("model", "list").stdout
    assert "* v2" in listing and "  v1" in listing
    show = run("model", "show", "v2")
    assert show.returncode == 0 and '"parent": "v1"' in show.stdout and '"source":' in show.stdout
    assert run("model", "rollback", "v1").returncode == 0
    assert "* v1" in run("model", "list").stdout
    bad = run("model", "rollback", "v7")
    assert bad.returncode == 1 and "v7" in bad.stderr


pytest_kafka = pytest.mark.kafka


@pytest_kafka
def test_worker_retrains_on_drift_swaps_and_follows_rollback(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "drift"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    rng = np.random.default_rng(4)
    ids = [f"s{i}" for i in range(S)]
    # regime A: slow daily-like waves; regime B: the fast oscillation
    t = np.arange(1200)
    a = 50 + 10 * np.sin(2 * np.pi * t[None, :600] / 300 + np.arange(S)[:, None]) + rng.normal(0, 0.3, (S, 600))
    b = regime_b(t[600:], rng)
    values = np.concatenate([a, b], axis=1)
    msgs = [(ids[i].encode(), orjson.dumps({"sensor_id": ids[i], "ts": 60.0 * k, "value": float(values[i, k])}))
            for k in range(values.shape[1]) for i in range(S)]
    cfg, port = worker_config(kafka, tmp_path, topic, training={
        "every_readings": 150 * S, "interval_seconds": 0, "min_improvement": 0.0, "max_seconds": 15, "max_epochs": 10,
        "registry_poll_seconds": 0.5}, kafka={"max_poll_records": 200})
    w = run_worker(cfg, port)
    produce(kafka, topic, msgs)  # regime A for 600 readings per sensor, then B
    w.wait_metric("streamrnn_readings_scored_total", len(msgs), timeout=120)
    w.wait_metric("streamrnn_retrain_runs_total", 1, labels={"result": "promoted"}, timeout=60)
    reg = ModelRegistry(tmp_path / "state" / "models", keep=5)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until a version trained on the new regime serves
        cur = reg.current()
        if cur and reg.meta(cur).training_window["to_ts"] >= 60.0 * 750 and w.metric("streamrnn_retrain_in_progress") == 0:
            break
        time.sleep(0.5)
    serving = reg.current()
    assert reg.meta(serving).training_window["from_ts"] >= 60.0 * 600  # its ring held only the new regime
    w.wait_metric("streamrnn_model_info", 1, labels={"version": serving}, timeout=20)
    assert w.metric("streamrnn_model_swaps_total") >= 1
    assert w.metric("streamrnn_last_successful_retrain_timestamp_seconds") > time.time() - 300

    # the promoted model forecasts the new regime better than the shipped one
    cont = regime_b(np.arange(1200, 1400), rng)
    maes = {}
    for name, mf in (("default", load_model(default_model_path())), ("promoted", reg.load(serving))):
        det = Detector(mf.model, version=mf.version)
        feed(det, values[:, 1000:], 1000)
        maes[name] = float(np.nanmean(feed(det, cont, 1200)))
    print(f"\nworker drift: MAE on the new regime {maes['default']:.3f} (shipped) -> {maes['promoted']:.3f} ({serving})")
    assert maes["promoted"] < 0.9 * maes["default"]

    # rollback through the CLI: the running worker follows the registry
    first = reg.versions()[0].version
    if first != serving:
        subprocess.run([sys.executable, "-m", "streamrnn", "model", "rollback", first, "--config", str(cfg)], check=True, cwd=ROOT)
        w.wait_metric("streamrnn_model_info", 1, labels={"version": first}, timeout=20)
    assert w.terminate() == 0


@pytest_kafka
def test_scoring_goes_on_during_a_slow_retrain(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "slowtrain"
    kafka.create_topics({topic: 2, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    rng = np.random.default_rng(5)
    values = regime_b(np.arange(3000), rng)
    ids = [f"s{i}" for i in range(S)]
    msg = lambda k: [(ids[i].encode(), orjson.dumps({"sensor_id": ids[i], "ts": 60.0 * k, "value": float(values[i, k])}))  # noqa: E731
                     for i in range(S)]
    cfg, port = worker_config(kafka, tmp_path, topic, training={
        "every_readings": 150 * S, "interval_seconds": 0, "max_seconds": 10, "max_epochs": 10000, "patience": 10000},
        kafka={"max_poll_records": 100})
    w = run_worker(cfg, port)
    produce(kafka, topic, [m for k in range(200) for m in msg(k)])
    w.wait_metric("streamrnn_retrain_in_progress", 1, timeout=60)
    at_start = w.metric("streamrnn_readings_scored_total")
    for k0 in range(200, 3000, 200):  # keep feeding while it trains
        produce(kafka, topic, [m for k in range(k0, k0 + 200) for m in msg(k)])
        if w.metric("streamrnn_retrain_in_progress") == 0:
            break
        time.sleep(0.5)
    during = w.metric("streamrnn_readings_scored_total") - at_start
    w.wait_metric("streamrnn_retrain_duration_seconds_count", 1, timeout=60)
    assert during > 1000  # readings kept being scored while the run was in flight
    assert w.terminate() == 0


@pytest_kafka
def test_worker_falls_back_from_a_corrupt_model_file(kafka: EmbeddedBroker, tmp_path: Path, run_worker) -> None:
    topic = "corrupt"
    kafka.create_topics({topic: 1, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
    reg = ModelRegistry(tmp_path / "state" / "models", keep=5)
    model = load_model(default_model_path()).model
    reg.publish(model, parent="default-1")
    reg.publish(model, parent="v1")
    (tmp_path / "state" / "models" / "v2.pt").write_bytes(b"garbage")
    cfg, port = worker_config(kafka, tmp_path, topic)
    w = run_worker(cfg, port)
    produce(kafka, topic, [(b"a", orjson.dumps({"sensor_id": "a", "ts": i, "value": float(i % 5)})) for i in range(1, 51)])
    w.wait_metric("streamrnn_readings_scored_total", 50)
    assert w.metric("streamrnn_model_info", {"version": "v1"}) == 1
    assert w.terminate() == 0
    assert "unusable" in w.log() and "serving v1 instead of v2" in w.log()


@pytest_kafka
def test_train_command_reads_the_topics_retained_history(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    topic = "history"
    kafka.create_topics({topic: 2})
    rng = np.random.default_rng(6)
    values = regime_b(np.arange(700), rng)[:6]
    produce(kafka, topic, [(f"s{i}".encode(), orjson.dumps({"sensor_id": f"s{i}", "ts": 60.0 * k, "value": float(v)}))
                           for k in range(values.shape[1]) for i, v in enumerate(values[:, k])])
    cfg, _ = worker_config(kafka, tmp_path, topic, training={"min_improvement": 0.0, "max_seconds": 15, "max_epochs": 3})
    p = subprocess.run([sys.executable, "-m", "streamrnn", "train", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "from 6 sensors" in p.stdout and "published v1" in p.stdout
    meta = ModelRegistry(tmp_path / "state" / "models", keep=5).meta("v1")
    assert meta.training_window["source"] == "topics" and meta.training_window["readings"] == values.size


def test_the_last_retrain_gauge_is_not_reset_by_a_restart(tmp_path: Path) -> None:
    from streamrnn.lifecycle.serving import ModelService

    mf = load_model(default_model_path())
    registry = ModelRegistry(tmp_path / "models", keep=3)

    def start() -> float:  # a worker start serving the packaged model
        m = WorkerMetrics()
        ModelService(Detector(mf.model, version=mf.version), registry, None, poll_seconds=60, observer=m)
        return m.registry.get_sample_value("streamrnn_last_successful_retrain_timestamp_seconds")

    first = start()
    assert first <= time.time()
    assert start() == first  # the second start reports when serving began, not itself
    meta = registry.publish(mf.model, parent=None)  # a promotion: the gauge follows it
    m = WorkerMetrics()
    ModelService(Detector(mf.model, version=meta.version), registry, None, poll_seconds=60, observer=m)
    assert m.registry.get_sample_value("streamrnn_last_successful_retrain_timestamp_seconds") == meta.created
