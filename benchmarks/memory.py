#!/usr/bin/env python3
"""Memory per sensor of the detector's state bank at 100,000 sensors.

    python benchmarks/memory.py [--sensors 100000] [--readings-per-sensor 3] [--history-length 128] [--pattern-windows 256]

Feeds every sensor a few readings (batches of 5,000, as the worker would) and reports
the state arrays' bytes per sensor, the Python-side index (sensor id dict and list,
measured with tracemalloc) and the process RSS growth per sensor, against the same
process before the bank was filled.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrnn.core import BankParams, Detector, ScoringParams  # noqa: E402
from streamrnn.lifecycle.artifacts import default_model_path, load_model  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=100_000)
    ap.add_argument("--readings-per-sensor", type=int, default=3)
    ap.add_argument("--history-length", type=int, default=128, help="state.history_length (the ring dominates the row)")
    ap.add_argument("--pattern-windows", type=int, default=256, help="scoring.pattern_windows (kept shapes per sensor)")
    args = ap.parse_args()
    n = args.sensors
    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version, scoring=ScoringParams(pattern_windows=args.pattern_windows),
                   bank=BankParams(max_sensors=n, initial_capacity=1024, history_length=args.history_length))
    ids = [f"plant-a/line-{i // 100:04d}/sensor-{i:06d}" for i in range(n)]
    warm = [ids[0]] * 10
    det.process(warm, np.arange(10.0), np.ones(10))  # torch and numpy warmed up before measuring
    rss0 = rss_bytes()
    tracemalloc.start()
    rng = np.random.default_rng(0)
    for r in range(args.readings_per_sensor):
        for a in range(0, n, 5000):
            chunk = ids[a:a + 5000]
            det.process(chunk, np.full(len(chunk), 100.0 + r * 60), rng.normal(size=len(chunk)))
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_bytes()
    bank = det.bank
    arrays = sum(a.nbytes for a in bank.arrays.values())
    per_slot = sum(a.nbytes // a.shape[0] for a in bank.arrays.values())
    print(f"sensors held: {len(bank)} (capacity {bank.capacity})")
    print(f"state arrays: {arrays / 2**20:.1f} MiB = {per_slot} bytes per sensor slot "
          f"(hidden state {bank.arrays['h'].nbytes // bank.capacity} B)")
    print(f"traced allocations while filling (state arrays, id index, temporaries): {traced / n:.0f} bytes per sensor")
    print(f"RSS growth: {(rss1 - rss0) / 2**20:.1f} MiB = {(rss1 - rss0) / n:.0f} bytes per sensor")


if __name__ == "__main__":
    main()
