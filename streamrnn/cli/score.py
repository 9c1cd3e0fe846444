"""``streamrnn score``: the worker's detector over a CSV file, in the worker's batches.

With ``message.value_fields`` configured the file is read in the wide layout (one
column per value field, see :func:`~streamrnn.ingest.files.read_wide_csv`) and the
output has one row per reading.

Rows are fed to the same :class:`~streamrnn.core.Detector` in file order, in batches
of ``batch_size`` rows, so a score computed here is the score the daemon would have
produced for the same stream. Every row's score uses that row and earlier rows only.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from ..config import Config
from ..core import Detector
from ..ingest.files import ReadingsFile, read_readings_csv, read_wide_csv, round_significant, write_csv
from ..lifecycle.retraining import Retrainer, RetrainResult
from ..lifecycle.serving import serving_detector

__all__ = ["score_command", "score_readings"]


def score_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``streamrnn score``; returns the exit code."""
    torch.set_num_threads(1)  # determinism and fair use of cores when files run in parallel
    msg = cfg.message
    readings = (read_wide_csv(args.input, sensor_field=msg.sensor_field, value_fields=msg.value_fields,
                              separator=msg.field_separator, tag_fields=msg.tag_fields)
                if msg.value_fields else read_readings_csv(args.input))
    detector = serving_detector(None, cfg.model.path, scoring=cfg.scoring, alerts=cfg.alerts, bank=cfg.state)
    retrainer = None
    if args.retrain_every > 0 and cfg.training.enabled and cfg.state.history_length:
        # one series is enough offline; promoted models stay in memory (no registry writes)
        retrainer = Retrainer(dataclasses.replace(cfg.training, min_sensors=1), None)
    scored = score_readings(readings, detector, batch_size=args.batch_size, retrainer=retrainer, retrain_every=args.retrain_every,
                            max_sensor_id_length=cfg.message.max_sensor_id_length)
    texts = {k: readings.columns[k] for k in ("sensor_id", "timestamp", "value", *msg.tag_fields)
             if k in readings.columns.column_names}
    numbers = {k: (v if k == "is_anomaly" else round_significant(v)) for k, v in scored.items()}
    write_csv({**texts, **numbers}, args.output)
    if args.plot:
        import pandas as pd

        from .plot import plot_scores

        frame = pd.DataFrame({**{k: v.to_numpy() for k, v in texts.items()}, **scored})
        plot_scores(frame, args.plot, cfg.alerts.threshold, title=args.input)
    return 0


def score_readings(readings: ReadingsFile, detector: Detector, *, batch_size: int, default_sensor: str = "series",
                   retrainer: Retrainer | None = None, retrain_every: int = 0,
                   max_sensor_id_length: int | None = None) -> dict[str, np.ndarray]:
    """Score a file's readings in order, in batches as a poll would bring them; one
    value per row for ``forecast, forecast_std, residual, anomaly_score, surprise,
    is_anomaly``.

    Rows whose timestamp or value cannot be parsed (the decoder's rules: no clock
    bound offline), whose sensor id is longer than ``max_sensor_id_length``, or that
    are at or before their sensor's previous timestamp, are not scored: their ``anomaly_score`` is 0. Within a
    batch, readings are taken in time order (as the worker takes a poll batch). With a
    ``retrainer``, the scheduled retraining runs inline after every ``retrain_every`` rows
    (fine-tuning on the history seen so far, never on later rows), as the daemon's
    would between two batches, and a promoted model serves from the next batch on.
    """
    n = len(readings)
    ids = readings.sensor_ids if readings.sensor_ids is not None else [default_sensor] * n
    ts, values = readings.ts, readings.values
    good = np.isfinite(ts) & np.isfinite(values)
    if readings.sensor_ids is not None and max_sensor_id_length is not None:
        good &= np.fromiter(map(len, ids), dtype=np.int64, count=n) <= max_sensor_id_length
    forecast = np.full(n, np.nan)
    fc_std = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    score = np.zeros(n)
    surprise = np.zeros(n)
    anomaly = np.zeros(n, dtype=np.int8)
    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        if retrainer is not None and retrain_every > 0:  # a batch ends where a retraining is due
            stop = min(stop, (start // retrain_every + 1) * retrain_every)
        sl = np.arange(start, stop)
        sl = sl[good[sl]]
        if len(sl):
            tags = None if readings.tags is None else [readings.tags[i] for i in sl]
            res = detector.process([ids[i] for i in sl], ts[sl], values[sl], tags=tags)
            ok = res.accepted
            forecast[sl] = res.forecast
            fc_std[sl] = res.forecast_std
            residual[sl] = res.residual
            score[sl[ok]] = res.score[ok]
            surprise[sl[ok]] = res.surprise[ok]
            anomaly[sl] = res.is_anomaly
        if retrainer is not None and retrain_every > 0 and stop % retrain_every == 0:
            job = retrainer.make_job(detector)
            if job is not None and retrainer.run(job) is RetrainResult.PROMOTED:
                promoted = retrainer.take_promoted()
                assert promoted is not None
                detector.swap_model(*promoted)
        start = stop
    return {"forecast": forecast, "forecast_std": fc_std, "residual": residual, "anomaly_score": score,
            "surprise": surprise, "is_anomaly": anomaly}
