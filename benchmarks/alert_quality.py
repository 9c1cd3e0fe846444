#!/usr/bin/env python3
"""Alert recall and false alerts on synthetic fleets with injected anomalies, per threshold.

    python benchmarks/alert_quality.py [--thresholds 0.6,0.5,0.35] [--seeds 21,22,23,24,25] [--sensors 30] [--ticks 2000]

Each seed generates the fleet the end-to-end test streams through Kafka (spikes, level
shifts and stuck sensors injected after 300 clean readings) and runs the packaged
detector over it offline, which the end-to-end test shows gives exactly the daemon's
alerts. An anomaly counts as found when its sensor opens an alert between its start
and ten readings after its end; every other opened alert is false. Use it to choose
``alerts.threshold``: it is the operating point an operator sees, where NAB only
ranks the anomaly scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrnn.config import Config  # noqa: E402
from streamrnn.devtools.fleet import SensorFleet  # noqa: E402
from streamrnn.lifecycle.serving import serving_detector  # noqa: E402


def near(event, anomaly, slack: float) -> bool:
    """Whether an alert event belongs to an anomaly: same sensor, from its start to ``slack`` seconds after its end."""
    return event.sensor_id == anomaly.sensor_id and anomaly.start_ts <= event.ts <= anomaly.end_ts + slack


def measure(threshold: float, seeds: list[int], sensors: int, ticks: int) -> dict:
    """Recall, false alerts per 1,000 normal readings and recall by kind, over all seeds."""
    found = total = false = normal = 0
    kinds: dict[str, list[int]] = {}
    for seed in seeds:
        fleet = SensorFleet(sensors, seed=seed, anomaly_rate=0.0006, clean_ticks=300, min_gap=600)
        df = fleet.frame(ticks)
        anomalies = fleet.all_anomalies()
        cfg = Config.model_validate({"alerts": {"threshold": threshold, "resolve_threshold": min(0.2, threshold)}})
        res = serving_detector(None, cfg.model.path, scoring=cfg.scoring, alerts=cfg.alerts, bank=cfg.state).process(df.sensor_id.tolist(), df.ts.to_numpy(), df.value.to_numpy())
        opens = [e for e in res.events if e.event == "open"]
        slack = 10 * fleet.interval
        for a in anomalies:
            hit = any(near(e, a, slack) for e in opens)
            k = kinds.setdefault(a.kind, [0, 0])
            k[0] += hit
            k[1] += 1
            found += hit
        total += len(anomalies)
        false += sum(not any(near(e, a, slack) for a in anomalies) for e in opens)
        normal += int((~df.is_anomalous).sum())
    return {"threshold": threshold, "anomalies": total, "recall": found / max(total, 1),
            "false_per_1000": 1000.0 * false / max(normal, 1), "normal_readings": normal,
            "recall_by_kind": {k: v[0] / v[1] for k, v in sorted(kinds.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", default="0.6,0.5,0.45,0.4,0.35,0.3", help="alerts.threshold values, comma-separated")
    ap.add_argument("--seeds", default="21,22,23,24,25", help="fleet seeds, comma-separated (21 is the end-to-end test's)")
    ap.add_argument("--sensors", type=int, default=30)
    ap.add_argument("--ticks", type=int, default=2000, help="readings per sensor")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [measure(float(t), seeds, args.sensors, args.ticks) for t in args.thresholds.split(",")]
    for r in rows:
        by_kind = ", ".join(f"{k} {v:.2f}" for k, v in r["recall_by_kind"].items())
        print(f"threshold {r['threshold']:.2f}: recall {r['recall']:.3f} of {r['anomalies']} ({by_kind}), "
              f"{r['false_per_1000']:.3f} false alerts per 1,000 normal readings")
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "sensors": args.sensors, "ticks": args.ticks, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
