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
import dataclasses
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..config import Config
from ..ingest.messages import MessageDecoder
from ..ingest.timestamps import epoch_or_nan
from ..lifecycle.datasets import NotEnoughHistory, windows_by_sensor
from ..lifecycle.gate import ValidationGate
from ..lifecycle.registry import ModelRegistry
from ..lifecycle.serving import load_serving
from ..lifecycle.trainer import Trainer

__all__ = ["train_command"]


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

    from ..daemon.transport.kafka_python import client_settings, read_to_end

    meta = KafkaConsumer(group_id=None, **client_settings(cfg.kafka))
    try:
        parts = [TopicPartition(t, p) for t in cfg.kafka.topics for p in sorted(meta.partitions_for_topic(t) or [])]
    finally:
        meta.close()
    dec = MessageDecoder(cfg.message)
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


def train_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``streamrnn train``; returns the exit code."""
    df = _read_file(args.input) if args.input else _read_topics(cfg)
    t = cfg.training
    try:
        x, y, xv, yv = windows_by_sensor(df, validation_fraction=t.validation_fraction,
                                         normaliser_halflife=cfg.scoring.normaliser_halflife, rng=np.random.default_rng(0))
    except NotEnoughHistory as e:
        raise SystemExit(f"streamrnn train: {e}") from None
    registry = ModelRegistry.in_state_dir(cfg.state.dir, keep=t.registry_keep)
    serving = load_serving(registry, cfg.model.path)
    budget = dataclasses.replace(t, max_epochs=args.epochs or t.max_epochs, max_seconds=args.max_seconds or t.max_seconds)
    trainer = Trainer(budget)
    base = trainer.evaluate(serving.model, xv, yv)
    candidate = copy.deepcopy(serving.model)
    with tqdm(total=trainer.max_epochs, desc="training", unit=" epoch", file=sys.stderr) as bar:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", serving=f"{base:.4f}")
            bar.update(1)
        res = trainer.fit(candidate, x, y, xv, yv, on_epoch=on_epoch)
    print(f"{len(x)} training and {len(xv)} validation windows from {df['sensor_id'].nunique()} sensors; "
          f"validation loss {res.best_val_loss:.4f} against {base:.4f} for the serving model {serving.version}")
    verdict = ValidationGate(t.min_improvement).judge(candidate_loss=res.best_val_loss, serving_loss=base)
    if not verdict.promote and not args.force:
        print(f"not published: it does not beat {serving.version} by training.min_improvement={t.min_improvement}")
        return 2
    window = {"sensors": int(df["sensor_id"].nunique()), "readings": int(len(df)),
              "from_ts": float(df["ts"].min()), "to_ts": float(df["ts"].max()), "source": args.input or "topics"}
    meta = registry.publish(candidate, parent=serving.version, training_window=window, val_loss=res.best_val_loss,
                            parent_val_loss=base, extra={"epochs": res.epochs, "stopped": res.stopped, "command": "streamrnn train"})
    print(f"published {meta.version} (sha256 {meta.sha256[:16]}); it is now the serving version")
    return 0
