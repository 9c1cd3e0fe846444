#!/usr/bin/env python3
"""The detection core alone (``Detector.process``), readings per second on one core.

    python benchmarks/core_throughput.py [--cases a,b,c,d] [--batch 5000] [--json FILE]

Cases (every default evidence on, the shipped model):

* a: 1 sensor x 1,000,000 readings (one high-rate sensor, a replay or a backfill);
* b: 1,000 sensors x 1,000 readings in partition order (8 partitions; within a
  partition, Kafka delivers each sensor's readings interleaved in time);
* c: 100,000 sensors x 10 readings, tick by tick;
* d: 1,000,000 sensors x 3 readings, tick by tick: the bank grows to a million.

Baseline in the same run, on the same batches: torch's GRU alone, one packed pass
per batch over each sensor's readings (the forecaster's arithmetic and nothing else),
so the ratio says what everything after the GRU costs. Pin the process to one core
(``taskset -c 1``) for figures comparable between runs; it sets torch to one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamrnn.core import BankParams, Detector  # noqa: E402
from streamrnn.core.features import N_FEATURES  # noqa: E402
from streamrnn.lifecycle.artifacts import default_model_path, load_model  # noqa: E402

CASES = {
    "a": ("1 sensor x 1,000,000 readings", 1, 1_000_000),
    "b": ("1,000 sensors x 1,000 readings, partition order", 1_000, 1_000),
    "c": ("100,000 sensors x 10 readings", 100_000, 10),
    "d": ("1,000,000 sensors x 3 readings (growing)", 1_000_000, 3),
}


def stream(case: str, sensors: int, per_sensor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sensor index, ts, value) in delivery order."""
    rng = np.random.default_rng(0)
    sid = np.tile(np.arange(sensors), per_sensor)
    tick = np.repeat(np.arange(per_sensor), sensors)
    if case == "b":  # 8 partitions by sensor; a partition's records arrive in time order
        part = sid % 8
        order = np.lexsort((sid, tick, part))
        sid, tick = sid[order], tick[order]
    ts = 1.7e9 + 60.0 * tick + rng.uniform(0, 5, len(sid))
    phase = (sid * 0.37) % (2 * np.pi)
    values = 50 + 10 * np.sin(2 * np.pi * tick / 288 + phase) + rng.normal(0, 1, len(sid))
    return sid, ts, values


def gru_only(model: torch.nn.Module, sid: np.ndarray, batch: int) -> float:
    """Seconds for torch's GRU to run every batch as packed per-sensor sequences."""
    state: dict[int, torch.Tensor] = {}
    t0 = time.perf_counter()
    for a in range(0, len(sid), batch):
        s = sid[a:a + batch]
        uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        pos = np.empty(len(s), np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos[order] = np.arange(len(s)) - np.repeat(starts, counts)
        x = np.zeros((len(uniq), counts.max(), N_FEATURES), np.float32)
        x[inv, pos, 0] = 0.1
        h0 = torch.stack([state.get(int(u), torch.zeros(model.state_size)) for u in uniq]) if len(uniq) < 5000 else None
        with torch.inference_mode():
            _, _, hn = model(torch.from_numpy(x), h0, torch.from_numpy(counts))
        if len(uniq) < 5000:
            for i, u in enumerate(uniq.tolist()):
                state[u] = hn[i]
    return time.perf_counter() - t0


def run_case(case: str, batch: int, model_file) -> dict[str, float | str]:
    label, sensors, per_sensor = CASES[case]
    sid, ts, values = stream(case, sensors, per_sensor)
    names = np.array([f"plant-{i // 1000:04d}/sensor-{i:07d}" for i in range(sensors)], dtype=object)
    ids = names[sid].tolist()
    det = Detector(model_file.model, version=model_file.version, bank=BankParams(max_sensors=max(sensors, 1), initial_capacity=1024))
    det.process(["warm-up"] * 10, np.arange(10.0), np.ones(10))  # compiled code loaded before timing
    t0 = time.perf_counter()
    scored = 0
    for a in range(0, len(ids), batch):
        scored += det.process(ids[a:a + batch], ts[a:a + batch], values[a:a + batch]).n_scored
    core_s = time.perf_counter() - t0
    base_s = gru_only(model_file.model, sid, batch)
    n = len(ids)
    return {"case": case, "label": label, "readings": n, "scored": scored, "core_readings_per_s": n / core_s,
            "gru_only_readings_per_s": n / base_s, "ratio_core_to_gru_only": base_s / core_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mf = load_model(default_model_path())
    results = []
    for case in args.cases.split(","):
        r = run_case(case, args.batch, mf)
        results.append(r)
        print(f"({case}) {r['label']:<48} core {r['core_readings_per_s']:>10,.0f}/s   GRU alone {r['gru_only_readings_per_s']:>10,.0f}/s"
              f"   ratio {r['ratio_core_to_gru_only']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
