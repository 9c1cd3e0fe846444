"""`streamrnn score`: the offline contract of DESIGN.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def score(inp: Path, out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "streamrnn", "score", str(inp), "-o", str(out), *extra], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    n = 1500
    ts = pd.date_range("2024-01-01", periods=n, freq="5min")
    v = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 1, n)
    v[1100] += 40
    p = tmp_path_factory.mktemp("score") / "in.csv"
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": np.round(v, 3)}).to_csv(p, index=False)
    return p


def test_output_contract(series_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    score(series_csv, out)
    inp, res = pd.read_csv(series_csv), pd.read_csv(out)
    assert {"timestamp", "value", "forecast", "residual", "anomaly_score", "is_anomaly"} <= set(res.columns)
    assert len(res) == len(inp)
    assert (res["timestamp"] == inp["timestamp"]).all()
    assert res["anomaly_score"].notna().all()
    assert res["anomaly_score"].between(0, 1).all()
    # the anomaly score is the surprise at an incident's onset, never more
    assert res["surprise"].between(0, 1).all() and (res["anomaly_score"] <= res["surprise"]).all()
    assert res.loc[1100, "anomaly_score"] >= 0.5 and res.loc[1100, "is_anomaly"] == 1
    assert res["is_anomaly"].sum() < 10


def test_deterministic_byte_for_byte(series_csv: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    score(series_csv, a)
    score(series_csv, b)
    assert a.read_bytes() == b.read_bytes()


def test_no_look_ahead(series_csv: Path, tmp_path: Path) -> None:
    df = pd.read_csv(series_csv)
    cut = 900
    changed = df.copy()
    changed.loc[cut:, "value"] = changed.loc[cut:, "value"][::-1].to_numpy() * 3 + 7
    p = tmp_path / "changed.csv"
    changed.to_csv(p, index=False)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    score(series_csv, a)
    score(p, b)
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    assert la[: cut + 1] == lb[: cut + 1]  # header + rows before the change
    assert la[cut + 1:] != lb[cut + 1:]


def test_several_sensors_and_bad_rows(tmp_path: Path) -> None:
    rows = []
    for i in range(300):
        rows.append({"timestamp": 1_700_000_000 + 60 * i, "value": float(np.sin(i / 10)), "sensor_id": "a"})
        rows.append({"timestamp": 1_700_000_000 + 60 * i, "value": float(np.cos(i / 7)) * 5, "sensor_id": "b"})
    rows[10]["value"] = "oops"
    rows[11]["timestamp"] = "not a time"
    p = tmp_path / "multi.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    out = tmp_path / "out.csv"
    score(p, out)
    res = pd.read_csv(out)
    assert len(res) == 600 and list(res["sensor_id"][:4]) == ["a", "b", "a", "b"]
    assert res.loc[10, "anomaly_score"] == 0 and res.loc[11, "anomaly_score"] == 0
    assert res["anomaly_score"].between(0, 1).all()
    # the anomaly score is the surprise at an incident's onset, never more
    assert res["surprise"].between(0, 1).all() and (res["anomaly_score"] <= res["surprise"]).all()


def test_inline_retraining_is_deterministic_and_never_looks_ahead(series_csv: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  max_seconds: 10\n  max_epochs: 3\n  min_improvement: 0.0\n")
    args = ("--config", str(cfg), "--retrain-every", "400")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    score(series_csv, a, *args)
    score(series_csv, b, *args)
    assert a.read_bytes() == b.read_bytes()
    df = pd.read_csv(series_csv)
    cut = 1000
    df.loc[cut:, "value"] = df.loc[cut:, "value"] * -2
    changed, c = tmp_path / "changed.csv", tmp_path / "c.csv"
    df.to_csv(changed, index=False)
    score(changed, c, *args)
    assert a.read_text().splitlines()[: cut + 1] == c.read_text().splitlines()[: cut + 1]
    plain = tmp_path / "plain.csv"
    score(series_csv, plain)
    assert plain.read_bytes() != a.read_bytes()  # a retrained model did serve part of the file


def test_plot_draws_a_png(series_csv: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "o.csv", tmp_path / "o.png"
    score(series_csv, out, "--plot", str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
