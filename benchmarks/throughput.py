#!/usr/bin/env python3
"""Worker throughput against raw kafka-python consumption of the same topic.

    python benchmarks/throughput.py [--readings 200000] [--sensors 1000] [--partitions 8] [--rounds 2] [--pattern-windows 256]

Starts the embedded broker, fills an N-partition topic with keyed JSON readings, then,
interleaved for each round:

* raw: a kafka-python group consumer (same fetch settings as the worker) that polls
  and ``json.loads`` every value, until it has read them all;
* worker: the streamrnn worker (in this process, its own consumer group) from start
  until every reading is scored and its lag is 0.

Prints both rates, their ratio, and the steady-state rates (first record to last,
leaving out the group join). Rates vary with the machine's load: compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamrnn.devtools.broker import EmbeddedBroker  # noqa: E402
from streamrnn.config import parse_config  # noqa: E402
from streamrnn.devtools.fleet import SensorFleet  # noqa: E402

GROUP_SETTINGS = dict(session_timeout_ms=3000, heartbeat_interval_ms=500, fetch_max_wait_ms=20)


def fill(broker: EmbeddedBroker, topic: str, readings: int, sensors: int) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random", "log_level": 2})
    fleet = SensorFleet(sensors, seed=1, anomaly_rate=0.0005, clean_ticks=50)
    sent = 0
    while sent < readings:
        ids, ts, values, _ = fleet.step()
        for sid, t, v in zip(ids, ts.tolist(), values.tolist()):
            if sent == readings:
                break
            while True:
                try:
                    p.produce(topic, key=sid.encode(), value=orjson.dumps({"sensor_id": sid, "ts": t, "value": v}))
                    break
                except BufferError:
                    p.poll(0.05)
            sent += 1
        p.poll(0)
    assert p.flush(60) == 0


def raw_rate(broker: EmbeddedBroker, topic: str, n: int, group: str, max_records: int) -> tuple[float, float]:
    from kafka import KafkaConsumer

    t0 = time.perf_counter()
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, max_poll_records=max_records, **GROUP_SETTINGS)
    got, first = 0, None
    total = 0.0
    while got < n:
        for recs in c.poll(timeout_ms=200).values():
            if first is None:
                first = time.perf_counter()
            for r in recs:
                total += json.loads(r.value)["value"]
            got += len(recs)
    t1 = time.perf_counter()
    c.close()
    return n / (t1 - t0), n / (t1 - first)


def worker_rate(broker: EmbeddedBroker, topic: str, n: int, group: str, max_records: int, state_dir: str,
                alerts: dict | None = None, training: dict | None = None, scoring: dict | None = None) -> tuple[float, float, dict]:
    from streamrnn.daemon.worker import Worker

    cfg = parse_config({
        "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": group,
                  "alerts_topic": f"{topic}-alerts", "dead_letter_topic": f"{topic}-dlq", "max_poll_records": max_records,
                  "poll_timeout_ms": 200, **GROUP_SETTINGS},
        "metrics": {"enabled": False},
        "state": {"dir": state_dir, "checkpoint_interval_seconds": 5},
        "alerts": {"log": False, **(alerts or {})},
        "training": training or {"enabled": False},
        "scoring": scoring or {},
    })
    t0 = time.perf_counter()
    w = Worker(cfg)
    marks: dict[str, float] = {}
    durations: list[float] = []
    in_flight: list[bool] = []
    inner = w.handle_batch

    def timed(batch):  # instrumentation only: when the first and last records were handled
        marks.setdefault("first", time.perf_counter())
        b0 = time.perf_counter()
        inner(batch)
        marks["last"] = time.perf_counter()
        durations.append(marks["last"] - b0)
        in_flight.append(bool(w.metrics.retrain_in_progress._value.get()))
        if w.metrics.readings_scored._value.get() >= n:
            w.request_stop()

    w.handle_batch = timed  # type: ignore[method-assign]
    th = threading.Thread(target=w.run)
    th.start()
    th.join()
    t1 = marks["last"]
    scored = int(w.metrics.readings_scored._value.get())
    assert scored == n, scored
    batches = w.metrics.batch_seconds.collect()[0]
    s = {x.name: x.value for x in batches.samples if x.name.endswith(("_sum", "_count"))}
    detail = {"scoring_seconds_total": s["streamrnn_scoring_batch_duration_seconds_sum"],
              "batches": int(s["streamrnn_scoring_batch_duration_seconds_count"]),
              "batch_p50_ms": 1000 * sorted(durations)[len(durations) // 2],
              "batch_p99_ms": 1000 * sorted(durations)[min(len(durations) - 1, int(0.99 * len(durations)))],
              "alert_events": int(sum(x.value for x in w.metrics.alert_events.collect()[0].samples if x.name.endswith("_total"))),
              "durations": durations, "retrain_in_flight": in_flight,
              "sink_dropped": int(sum(x.value for x in w.metrics.sink_dropped.collect()[0].samples if x.name.endswith("_total")))}
    return n / (t1 - t0), n / (t1 - marks["first"]), detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-records", type=int, default=5000)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--pattern-windows", type=int, default=256, help="scoring.pattern_windows (0: no pattern novelty)")
    args = ap.parse_args()

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = "bench"
        broker.create_topics({topic: args.partitions, f"{topic}-alerts": 1, f"{topic}-dlq": 1})
        t = time.perf_counter()
        fill(broker, topic, args.readings, args.sensors)
        print(f"filled {args.readings} readings over {args.sensors} sensors, {args.partitions} partitions in {time.perf_counter() - t:.1f}s")
        rows = []
        for r in range(args.rounds):
            raw, raw_ss = raw_rate(broker, topic, args.readings, f"raw-{r}", args.max_records)
            wk, wk_ss, detail = worker_rate(broker, topic, args.readings, f"worker-{r}", args.max_records, f"{tmp}/s{r}",
                                            scoring={"pattern_windows": args.pattern_windows})
            rows.append({"raw": raw, "raw_steady": raw_ss, "worker": wk, "worker_steady": wk_ss, **detail})
            print(f"round {r}: raw {raw:,.0f}/s (steady {raw_ss:,.0f}/s)  worker {wk:,.0f}/s (steady {wk_ss:,.0f}/s)  "
                  f"ratio {wk / raw:.2f} (steady {wk_ss / raw_ss:.2f}); scoring took {detail['scoring_seconds_total']:.2f}s "
                  f"in {detail['batches']} batches")
        med = lambda k: sorted(x[k] for x in rows)[len(rows) // 2]  # noqa: E731
        print(f"\nmedian: raw {med('raw'):,.0f} readings/s, worker {med('worker'):,.0f} readings/s, ratio {med('worker') / med('raw'):.2f}; "
              f"steady state raw {med('raw_steady'):,.0f}/s, worker {med('worker_steady'):,.0f}/s, ratio {med('worker_steady') / med('raw_steady'):.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
