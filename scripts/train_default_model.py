#!/usr/bin/env python3
"""Regenerate the forecaster shipped in the package, from synthetic data only.

    python scripts/train_default_model.py [--out streamrnn/models/default.pt] [--seed 0]

The training data is the project's own synthetic fleet (streamrnn.devtools.fleet) at
several sampling intervals, with no anomalies injected; no benchmark file is read.
Deterministic for a given seed on one machine (torch runs single-threaded here).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streamrnn.core import GRUForecaster, ScoringParams
from streamrnn.devtools.fleet import SensorFleet
from streamrnn.lifecycle.artifacts import default_model_path, save_model
from streamrnn.lifecycle.datasets import make_windows
from streamrnn.lifecycle.trainer import Trainer, TrainerParams

INTERVALS = (5.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)


def synthetic_windows(seed: int, sensors: int, ticks: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for j, interval in enumerate(INTERVALS):
        fleet = SensorFleet(sensors, seed=seed * 100 + j, interval=interval)
        ts = np.empty((sensors, ticks))
        vals = np.empty((sensors, ticks))
        for t in range(ticks):
            _, tt, v, _ = fleet.step()
            ts[:, t], vals[:, t] = tt, v
        x, y = make_windows(ts, vals, window=256, stride=192, normaliser_halflife=ScoringParams().normaliser_halflife)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(default_model_path()))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--sensors", type=int, default=48)
    ap.add_argument("--ticks", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=25)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    t0 = time.time()
    x, y = synthetic_windows(args.seed, args.sensors, args.ticks)
    xv, yv = synthetic_windows(args.seed + 1, max(8, args.sensors // 4), args.ticks)
    print(f"windows: train {len(x)}, validation {len(xv)} ({time.time() - t0:.1f}s)")
    model = GRUForecaster(hidden_size=args.hidden)
    # training from scratch: a faster rate, more patience and a longer burn-in than fine-tuning
    trainer = Trainer(TrainerParams(learning_rate=3e-3, batch_size=64, max_epochs=args.epochs, max_seconds=1800, patience=4,
                                    burn_in=32), seed=args.seed)
    res = trainer.fit(model, x, y, xv, yv, on_epoch=lambda e, tr, va: print(f"epoch {e:3d} train {tr:.4f} val {va:.4f}", flush=True))
    digest = save_model(args.out, model, version="default-1", meta={
        "trained_on": "synthetic fleet (streamrnn.devtools.fleet.SensorFleet), intervals " + ",".join(f"{i:g}" for i in INTERVALS),
        "seed": args.seed, "val_loss": res.best_val_loss, "epochs": res.epochs,
    })
    print(f"saved {args.out} sha256 {digest} val_loss {res.best_val_loss:.4f} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
