#!/usr/bin/env python3
"""Batch latency with and without a retrain in flight.

    python benchmarks/retrain_latency.py [--readings 200000] [--sensors 1000]

Same topic, same process: the worker with training disabled, then with a retrain
started early in the stream and kept busy (large epoch budget, time budget of
``--train-seconds``). Reports p50/p99 of the batch handling time for all batches of
the first run and for the batches of the second run that ran while the retrain was
in flight (thread beside the scoring loop, sharing the process and its 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import fill, worker_rate  # noqa: E402

from streamrnn.devtools.broker import EmbeddedBroker  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return 1000 * float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--train-seconds", type=float, default=30.0)
    ap.add_argument("--max-records", type=int, default=1000)
    args = ap.parse_args()
    training = {"enabled": True, "every_readings": args.sensors * 130, "interval_seconds": 0, "min_improvement": 0.0,
                "max_seconds": args.train_seconds, "max_epochs": 100000, "patience": 100000}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        broker.create_topics({"rt": 8, "rt-alerts": 1, "rt-dlq": 1})
        fill(broker, "rt", args.readings, args.sensors)
        rate0, _, d0 = worker_rate(broker, "rt", args.readings, "no-retrain", args.max_records, f"{tmp}/a")
        rate1, _, d1 = worker_rate(broker, "rt", args.readings, "retrain", args.max_records, f"{tmp}/b", training=training)
        base = d0["durations"]
        during = [d for d, f in zip(d1["durations"], d1["retrain_in_flight"]) if f]
        outside = [d for d, f in zip(d1["durations"], d1["retrain_in_flight"]) if not f]
        print(f"no retrain:        {len(base):4d} batches  p50 {pct(base, 50):6.1f} ms  p99 {pct(base, 99):6.1f} ms  ({rate0:,.0f} readings/s)")
        print(f"retrain in flight: {len(during):4d} batches  p50 {pct(during, 50):6.1f} ms  p99 {pct(during, 99):6.1f} ms")
        print(f"same run, outside: {len(outside):4d} batches  p50 {pct(outside, 50):6.1f} ms  p99 {pct(outside, 99):6.1f} ms  ({rate1:,.0f} readings/s)")


if __name__ == "__main__":
    main()
