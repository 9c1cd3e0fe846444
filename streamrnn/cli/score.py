"""``streamrnn score``: the worker's detector over a CSV file, in the worker's batches.

Rows are fed to the same :class:`~streamrnn.core.Detector` in file order, in batches
of ``batch_size`` rows, so a score computed here is the score the daemon would have
produced for the same stream. Every row's score uses that row and earlier rows only.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..core import Detector
from ..ingest.timestamps import epoch_or_nan
from ..lifecycle.retraining import Retrainer, RetrainResult
from ..lifecycle.serving import serving_detector

__all__ = ["read_readings_csv", "score_command", "score_frame"]


def score_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``streamrnn score``; returns the exit code."""
    torch.set_num_threads(1)  # determinism and fair use of cores when files run in parallel
    df = read_readings_csv(args.input)
    detector = serving_detector(None, cfg.model.path, scoring=cfg.scoring, alerts=cfg.alerts, bank=cfg.state)
    retrainer = None
    if args.retrain_every > 0 and cfg.training.enabled and cfg.state.history_length:
        # one series is enough offline; promoted models stay in memory (no registry writes)
        retrainer = Retrainer(dataclasses.replace(cfg.training, min_sensors=1), None)
    out = score_frame(df, detector, batch_size=args.batch_size, retrainer=retrainer, retrain_every=args.retrain_every)
    out.to_csv(args.output, index=False, float_format="%.9g")
    if args.plot:
        from .plot import plot_scores

        plot_scores(out, args.plot, cfg.alerts.threshold, title=args.input)
    return 0


def _to_float(x: object) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return np.nan
    return v


def read_readings_csv(path: str) -> pd.DataFrame:
    """Read ``timestamp,value[,sensor_id]`` keeping the timestamp text as written."""
    df = pd.read_csv(path, dtype={"timestamp": str, "sensor_id": str}, keep_default_na=False)
    missing = {"timestamp", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df


def score_frame(df: pd.DataFrame, detector: Detector, batch_size: int = 1000, default_sensor: str = "series",
                retrainer: Retrainer | None = None, retrain_every: int = 0) -> pd.DataFrame:
    """Score a frame of readings in order; one output row per input row.

    Rows whose timestamp or value cannot be parsed, or that are at or before their
    sensor's previous timestamp, are not scored: their ``anomaly_score`` is 0. With a
    ``retrainer``, the scheduled retraining runs inline every ``retrain_every`` rows
    (fine-tuning on the history seen so far, never on later rows), as the daemon's
    would between two batches, and a promoted model serves from the next batch on.
    """
    n = len(df)
    ids = df["sensor_id"].astype(str).tolist() if "sensor_id" in df.columns else [default_sensor] * n
    ts = np.array([epoch_or_nan(x) for x in df["timestamp"].tolist()], dtype=np.float64)
    values = np.array([_to_float(x) for x in df["value"].tolist()], dtype=np.float64)
    good = np.isfinite(ts) & np.isfinite(values)

    forecast = np.full(n, np.nan)
    fc_std = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    score = np.zeros(n)
    surprise = np.zeros(n)
    anomaly = np.zeros(n, dtype=bool)
    for start in range(0, n, batch_size):
        sl = np.arange(start, min(start + batch_size, n))
        sl = sl[good[sl]]
        if len(sl) == 0:
            continue
        res = detector.process([ids[i] for i in sl], ts[sl], values[sl])
        ok = res.accepted
        forecast[sl] = res.forecast
        fc_std[sl] = res.forecast_std
        residual[sl] = res.residual
        score[sl[ok]] = res.score[ok]
        surprise[sl[ok]] = res.surprise[ok]
        anomaly[sl] = res.is_anomaly
        if retrainer is not None and retrain_every > 0 and (start + batch_size) // retrain_every > start // retrain_every:
            job = retrainer.make_job(detector)
            if job is not None and retrainer.run(job) is RetrainResult.PROMOTED:
                promoted = retrainer.take_promoted()
                assert promoted is not None
                detector.swap_model(*promoted)
    score = np.nan_to_num(np.clip(score, 0.0, 1.0), nan=0.0)
    surprise = np.nan_to_num(np.clip(surprise, 0.0, 1.0), nan=0.0)

    out = pd.DataFrame({
        "timestamp": df["timestamp"].to_numpy(), "value": df["value"].to_numpy(), "forecast": forecast,
        "forecast_std": fc_std, "residual": residual, "anomaly_score": score, "surprise": surprise,
        "is_anomaly": anomaly.astype(int),
    })
    if "sensor_id" in df.columns:
        out.insert(0, "sensor_id", df["sensor_id"].to_numpy())
    return out
