#!/usr/bin/env python3
"""Does a dead alert webhook slow scoring? Batch latency with and without one.

    python benchmarks/dead_sink.py [--readings 100000] [--rounds 2]

Same topic, same process, interleaved: the worker with no sink, then with a webhook
sink whose URL refuses connections (default retries and backoff). Reports the batch
handling latency p50/p99 and the throughput of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import fill, worker_rate  # noqa: E402

from streamrnn.devtools.broker import EmbeddedBroker, free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--sensors", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    dead = {"sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", "name": "dead"}]}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        broker.create_topics({"sink": 4, "sink-alerts": 1, "sink-dlq": 1})
        fill(broker, "sink", args.readings, args.sensors)
        for r in range(args.rounds):
            for label, alerts in (("no sink", None), ("dead webhook", dead)):
                rate, _, d = worker_rate(broker, "sink", args.readings, f"{label}-{r}".replace(" ", "-"), 5000, f"{tmp}/{label}{r}", alerts)
                print(f"round {r} {label:<13} {rate:8,.0f} readings/s  batch p50 {d['batch_p50_ms']:.1f} ms  p99 {d['batch_p99_ms']:.1f} ms  "
                      f"alerts {d['alert_events']}  dropped {d['sink_dropped']}")


if __name__ == "__main__":
    main()
