#!/usr/bin/env python3
"""Detection power: the share of anomalies of known size that open an alert, by kind and
size in units of the sensor's one-step noise, and the false alerts per 1,000 normal readings.

    python benchmarks/detection_power.py [--per-cell 20] [--seed 1] [--set scoring.use_predicted_std=true ...]
                                         [--json benchmarks/results/detection_power.json]

Every sensor is made for this benchmark, unlike the demo fleet: a period unrelated to
the day (or a daily one, or none), a cadence of 10 s to 5 min with jitter and gaps,
smooth (AR(1), phi 0.9) or white noise, Gaussian or Student-t(3) innovations,
magnitudes from 1e-3 to 1e4 and levels around zero, positive or negative. Its one-step
noise sigma is the innovations' deviation, the part of each step no forecaster can
know. Each sensor gets one anomaly after a clean stretch (4,000 readings, the anomaly
in the second half), of one kind and size k (3, 4, 6, 8, 12):

- spike: one reading k sigma off; level_shift: k sigma from then on;
- ramp: rising to k sigma over 100 readings, then held;
- variance_burst: 30 readings whose innovations are k times as large;
- dropout: 20 readings at zero, on a sensor whose level is k sigma above zero;
- stuck: the last value repeated for 10 k readings;
- shape: for one period, a second harmonic of k sigma added to the cycle.

About 30 % of the sensors have Student-t(3) noise, and the rates are reported for them
and for the Gaussian ones apart: a normal reading of such a sensor is 6 sigma off about
twice in 1,000, so no detector can flag 6-sigma spikes on it at one false alert per
1,000 (the table's last row gives that chance per size). Each split cell holds fewer
sensors (about 6 and 14 of the 20), so it moves in steps of 5 to 15 points.

An anomaly counts as found when its sensor opens an alert from its start to 10
readings after its end; every other open is false. Readings are run through the
``Detector`` the worker serves, with the default configuration unless ``--set``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrnn.config import Config  # noqa: E402
from streamrnn.lifecycle.serving import serving_detector  # noqa: E402

NOISES = ("gaussian", "student_t3")
KINDS = ("spike", "level_shift", "ramp", "variance_burst", "dropout", "stuck", "shape")
SIZES = (3, 4, 6, 8, 12)
LENGTH = 4000
SLACK = 10  # readings after an anomaly's end in which its alert still counts


@dataclass
class Sensor:
    """One generated sensor: readings and where its anomaly lies (reading indices)."""

    sensor_id: str
    ts: np.ndarray
    values: np.ndarray
    kind: str
    size: int
    start: int
    end: int
    heavy: bool  # Student-t(3) innovations rather than Gaussian


def make_sensor(rng: np.random.Generator, sensor_id: str, kind: str, size: int) -> Sensor:
    """A sensor of random character with one anomaly of ``kind`` and ``size`` sigma."""
    step = float(rng.choice([10.0, 60.0, 300.0]))
    dt = step * rng.uniform(0.8, 1.2, LENGTH)
    gaps = rng.random(LENGTH) < 0.002  # a missed stretch of 5 to 30 intervals now and then
    dt[gaps] *= rng.integers(5, 31, gaps.sum())
    ts = 1.7e9 + rng.uniform(0, 86400) + np.cumsum(dt)
    periodic = kind == "shape" or rng.random() < 0.8
    if not periodic:
        period = np.inf
    elif rng.random() < 0.3:
        period = 86400.0
    else:  # 40 to 400 readings a cycle, unrelated to the day
        period = step * rng.uniform(40, 400)
    amplitude = rng.uniform(5, 30) if periodic else 0.0  # in units of the one-step noise
    phi = 0.9 if rng.random() < 0.5 else 0.0
    heavy = rng.random() < 0.3
    innov = rng.standard_t(3, LENGTH) / np.sqrt(3.0) if heavy else rng.standard_normal(LENGTH)

    start = int(rng.integers(LENGTH // 2, LENGTH - 400))
    end = start
    burst = np.ones(LENGTH)
    if kind == "variance_burst":
        end = start + 29
        burst[start:end + 1] = size
    noise = np.zeros(LENGTH)
    for i in range(1, LENGTH):
        noise[i] = phi * noise[i - 1] + innov[i] * burst[i]
    phase = 2 * np.pi * (ts - ts[0]) / period if periodic else np.zeros(LENGTH)
    x = amplitude * np.sin(phase) + noise  # in sigma units
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "spike":
        x[start] += sign * size
    elif kind == "level_shift":
        x[start:] += sign * size
        end = start + 10
    elif kind == "ramp":
        end = start + 99
        x[start:end + 1] += sign * size * np.linspace(1 / 100, 1, 100)
        x[end + 1:] += sign * size
    elif kind == "stuck":
        end = start + 10 * size - 1
        x[start:end + 1] = x[start - 1]
    elif kind == "shape":
        cycle = int(np.searchsorted(ts, ts[start] + period)) - 1
        end = min(max(cycle, start + 20), LENGTH - 1)
        x[start:end + 1] += size * np.sin(2 * phase[start:end + 1])

    scale = 10.0 ** rng.uniform(-3, 4)
    if kind == "dropout":
        # no cycle: the sensor's level stands size sigma above zero, so the drop is that size
        x = noise + size
        end = start + 19
        values = scale * x
        values[start:end + 1] = 0.0
    else:
        offset = float(rng.choice([0.0, 1.0, -1.0])) * rng.uniform(10, 1000)
        values = scale * (offset + x)
    return Sensor(sensor_id, ts, values, kind, size, start, end, heavy)


def fleet(per_cell: int, seed: int) -> list[Sensor]:
    """``per_cell`` sensors for every kind and size."""
    rng = np.random.default_rng(seed)
    return [make_sensor(rng, f"{kind}-{size}-{j}", kind, size)
            for kind in KINDS for size in SIZES for j in range(per_cell)]


def measure(sensors: list[Sensor], overrides: dict) -> dict:
    """Detection rate by kind and size and false alerts per 1,000 normal readings."""
    cfg = Config.model_validate(overrides)
    det = serving_detector(None, cfg.model.path, scoring=cfg.scoring, alerts=cfg.alerts, bank=cfg.state)
    # interleaved in time, as a worker sees them
    ids = np.concatenate([np.full(LENGTH, i) for i in range(len(sensors))])
    ts = np.concatenate([s.ts for s in sensors])
    values = np.concatenate([s.values for s in sensors])
    order = np.argsort(ts, kind="stable")
    names = [s.sensor_id for s in sensors]
    t0 = time.perf_counter()
    res = det.process([names[i] for i in ids[order].tolist()], ts[order], values[order])
    seconds = time.perf_counter() - t0
    opens: dict[str, list[float]] = {}
    for e in res.events:
        if e.event == "open" and e.kind.value == "anomaly":
            opens.setdefault(e.sensor_id, []).append(e.ts)
    hits: dict[str, dict[int, list[int]]] = {k: {z: [0, 0] for z in SIZES} for k in KINDS}
    by_noise = {n: {k: {z: [0, 0] for z in SIZES} for k in KINDS} for n in NOISES}
    false = normal = 0
    for s in sensors:
        lo, hi = s.ts[s.start], s.ts[min(s.end + SLACK, LENGTH - 1)]
        got = opens.get(s.sensor_id, [])
        cell = hits[s.kind][s.size]
        found = any(lo <= t <= hi for t in got)
        for c in (cell, by_noise[NOISES[s.heavy]][s.kind][s.size]):
            c[0] += found
            c[1] += 1
        false += sum(not lo <= t <= hi for t in got)
        normal += LENGTH - (min(s.end + SLACK, LENGTH - 1) - s.start + 1)
    return {
        "overrides": overrides, "sensors": len(sensors), "readings": int(len(ts)), "seconds": round(seconds, 2),
        "false_per_1000": round(1000.0 * false / normal, 3), "false_alerts": false, "normal_readings": normal,
        "rate": _rates(hits),
        "rate_by_noise": {n: _rates(h) for n, h in by_noise.items()},
        "t3_chance": {str(z): float(f"{t3_chance(z):.3g}") for z in SIZES},
    }


def _rates(hits: dict[str, dict[int, list[int]]]) -> dict[str, dict[str, float]]:
    return {k: {str(z): round(v[0] / v[1], 3) if v[1] else float("nan") for z, v in cells.items()}
            for k, cells in hits.items()}


def t3_chance(k: float) -> float:
    """``P(|X| >= k)`` for the heavy-tailed sensors' unit-variance Student-t(3) noise.

    A normal reading of a heavy-tailed sensor is this often ``k`` sigma off, so at one
    false alert per 1,000 normal readings no detector can flag single readings of
    ``k`` sigma on it where this exceeds 1/1,000 (6 sigma: about 2 in 1,000).
    """
    return 1.0 - 2.0 / math.pi * (k / (1.0 + k * k) + math.atan(k))  # closed-form t(3) CDF at k*sqrt(3)


def parse_set(items: list[str]) -> dict:
    """``section.key=value`` pairs (values as YAML) into a nested config dict."""
    import yaml

    out: dict = {}
    for item in items:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = yaml.safe_load(raw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-cell", type=int, default=20, help="sensors per kind and size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a configuration override")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    r = measure(fleet(args.per_cell, args.seed), parse_set(args.set))
    print(f"{r['sensors']} sensors, {r['readings']:,} readings in {r['seconds']} s; "
          f"false alerts {r['false_alerts']} = {r['false_per_1000']} per 1,000 normal readings")
    for title, rates in [("all sensors", r["rate"])] + [(f"{n} noise only", v) for n, v in r["rate_by_noise"].items()]:
        print(f"{title:<16}" + "".join(f"{z:>7} sd" for z in SIZES))
        for kind, cells in rates.items():
            print(f"{kind:<16}" + "".join(f"{cells[str(z)]:>10.2f}" for z in SIZES))
    print(f"{'t(3) chance':<16}" + "".join(f"{r['t3_chance'][str(z)]:>10.1e}" for z in SIZES)
          + "   (a heavy-tailed sensor's normal reading this many sigma off)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
