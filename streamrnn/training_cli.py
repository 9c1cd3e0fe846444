"""``streamrnn train``: a new registry version from a file or the topics' history.

The data is ``sensor_id, timestamp, value`` (CSV or Parquet), or the configured topics
read from the beginning to their high watermark. Each sensor's series is cut into
windows with the detector's own features; the most recent ``training.validation_fraction``
of every sensor's windows is held out. The candidate starts from the serving model and
is published only if it beats it on the held-out windows (unless ``--force``).
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from .config import Config
from .core.training import Trainer, make_windows
from .messages import MessageDecoder, epoch_or_nan

__all__ = ["train_command", "windows_by_sensor"]

WINDOW, STRIDE, MAX_WINDOWS_PER_SENSOR = 256, 128, 64


def _read_file(path: str) -> pd.DataFrame:
    if path.endswith((".parquet", ".pq")):
        try:
            df = pd.read_parquet(path)
        except ImportError as e:
            raise SystemExit(f"streamrnn train: reading Parquet needs pyarrow ({e}); pip install pyarrow") from None
    else:
        df = pd.read_csv(path, dtype={"sensor_id": str, "timestamp": str})
    missing = {"sensor_id", "timestamp", "value"} - set(df.columns)
    if missing:
        raise SystemExit(f"streamrnn train: {path} lacks column(s) {', '.join(sorted(missing))}")
    ts = [epoch_or_nan(x) for x in df["timestamp"].tolist()]
    out = pd.DataFrame({"sensor_id": df["sensor_id"].astype(str), "ts": ts, "value": pd.to_numeric(df["value"], errors="coerce")})
    return out.dropna()


def _read_topics(cfg: Config) -> pd.DataFrame:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from .transport import client_settings, read_to_end

    meta = KafkaConsumer(group_id=None, **client_settings(cfg.kafka))
    try:
        parts = [TopicPartition(t, p) for t in cfg.kafka.topics for p in sorted(meta.partitions_for_topic(t) or [])]
    finally:
        meta.close()
    dec = MessageDecoder(cfg.message.sensor_field, cfg.message.time_field, cfg.message.value_field)
    ids: list[str] = []
    ts: list[float] = []
    vals: list[float] = []
    chunk: list[bytes | None] = []

    def flush() -> None:
        d = dec.decode(chunk)
        ids.extend(d.sensor_ids)
        ts.extend(d.ts)
        vals.extend(d.values)
        chunk.clear()

    with tqdm(desc="reading topics", unit=" msg", file=sys.stderr) as bar:
        for r in read_to_end(cfg.kafka, {tp: None for tp in parts}, timeout=3600, max_poll_records=10000):
            chunk.append(r.value)
            if len(chunk) >= 10000:
                bar.update(len(chunk))
                flush()
        bar.update(len(chunk))
        flush()
    return pd.DataFrame({"sensor_id": ids, "ts": ts, "value": vals})


def windows_by_sensor(df: pd.DataFrame, validation_fraction: float, normaliser_halflife: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation windows; each sensor's latest windows are its validation part."""
    xs, ys, xv, yv = [], [], [], []
    for _, g in df.sort_values(["sensor_id", "ts"], kind="stable").groupby("sensor_id", sort=False):
        g = g.drop_duplicates("ts")
        x, y = make_windows(g["ts"].to_numpy()[None, :], g["value"].to_numpy()[None, :], WINDOW, STRIDE, normaliser_halflife)
        if len(x) < 2:
            continue
        n_val = max(1, int(round(validation_fraction * len(x))))
        tr, va = np.arange(len(x) - n_val), np.arange(len(x) - n_val, len(x))
        if len(tr) > MAX_WINDOWS_PER_SENSOR:  # chatty sensors do not dominate
            tr = np.sort(rng.choice(tr, MAX_WINDOWS_PER_SENSOR, replace=False))
        xs.append(x[tr]), ys.append(y[tr]), xv.append(x[va]), yv.append(y[va])
    if not xs:
        raise SystemExit(f"streamrnn train: no sensor has the {WINDOW + STRIDE + 1} readings needed for two windows")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(xv), np.concatenate(yv)


def train_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``streamrnn train``; returns the exit code."""
    from .worker import load_detector, registry_for

    df = _read_file(args.input) if args.input else _read_topics(cfg)
    t = cfg.training
    x, y, xv, yv = windows_by_sensor(df, t.validation_fraction, cfg.scoring.normaliser_halflife, np.random.default_rng(0))
    serving = load_detector(cfg, use_registry=True)
    trainer = Trainer(lr=t.learning_rate, batch_size=t.batch_size, max_epochs=args.epochs or t.max_epochs,
                      max_seconds=args.max_seconds or t.max_seconds, patience=t.patience, burn_in=32)
    base = trainer.evaluate(serving.model, xv, yv)
    candidate = copy.deepcopy(serving.model)
    with tqdm(total=trainer.max_epochs, desc="training", unit=" epoch", file=sys.stderr) as bar:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", serving=f"{base:.4f}")
            bar.update(1)
        res = trainer.fit(candidate, x, y, xv, yv, on_epoch=on_epoch)
    print(f"{len(x)} training and {len(xv)} validation windows from {df['sensor_id'].nunique()} sensors; "
          f"validation loss {res.best_val_loss:.4f} against {base:.4f} for the serving model {serving.model_version}")
    if not (res.best_val_loss < base - t.min_improvement) and not args.force:
        print(f"not published: it does not beat {serving.model_version} by training.min_improvement={t.min_improvement}")
        return 2
    window = {"sensors": int(df["sensor_id"].nunique()), "readings": int(len(df)),
              "from_ts": float(df["ts"].min()), "to_ts": float(df["ts"].max()), "source": args.input or "topics"}
    meta = registry_for(cfg).publish(candidate, parent=serving.model_version, training_window=window,
                                     val_loss=res.best_val_loss, parent_val_loss=base,
                                     extra={"epochs": res.epochs, "stopped": res.stopped, "command": "streamrnn train"})
    print(f"published {meta.version} (sha256 {meta.sha256[:16]}); it is now the serving version")
    return 0
