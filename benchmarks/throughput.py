#!/usr/bin/env python3
"""Worker throughput against raw consumption of the same topic with the same client.

    python benchmarks/throughput.py [--clients kafka-python,confluent-kafka] [--readings 200000] [--sensors 1000]
                                    [--partitions 8] [--rounds 3] [--scores] [--json FILE]

Starts the embedded broker and fills an N-partition topic with keyed JSON readings
(the sensor's own timestamp in a different accepted form for each message: epoch
seconds, epoch milliseconds, a numeric string, ISO-8601). Then, interleaved for each
round and each client:

* raw: a group consumer of that client (the worker's fetch settings) that polls and
  ``json.loads`` every value, until it has read them all;
* worker: the streamrnn worker with ``kafka.client`` set to that client (in this
  process, its own consumer group), until every reading is scored;
* with ``--scores``, the same worker with ``kafka.scores_topic`` set (one record
  produced per scored reading), reported as a ratio to the worker without it.

Rates are taken from the group's first assignment (the join itself is the broker's
and the same for both) to the last record. Also the p50/p99 of the worker's batch
latency (decode, score, publish). Rates vary with the machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamrnn.devtools.broker import EmbeddedBroker  # noqa: E402
from streamrnn.config import parse_config  # noqa: E402
from streamrnn.devtools.fleet import SensorFleet  # noqa: E402

GROUP_SETTINGS = dict(session_timeout_ms=3000, heartbeat_interval_ms=500, fetch_max_wait_ms=20)


def _ts_forms(t: float, i: int) -> float | int | str:
    """The same instant in one of the accepted forms, by message number."""
    form = i % 4
    if form == 0:
        return t
    if form == 1:
        return int(t * 1000)
    if form == 2:
        return repr(t)
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def fill(broker: EmbeddedBroker, topic: str, readings: int, sensors: int) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random", "log_level": 2})
    fleet = SensorFleet(sensors, seed=1, anomaly_rate=0.0005, clean_ticks=50)
    sent = 0
    while sent < readings:
        ids, ts, values, _ = fleet.step()
        for sid, t, v in zip(ids, ts.tolist(), values.tolist(), strict=True):
            if sent == readings:
                break
            while True:
                try:
                    p.produce(topic, key=sid.encode(), value=orjson.dumps({"sensor_id": sid, "ts": _ts_forms(t, sent), "value": v}))
                    break
                except BufferError:
                    p.poll(0.05)
            sent += 1
        p.poll(0)
    assert p.flush(60) == 0


def raw_rate(broker: EmbeddedBroker, topic: str, n: int, group: str, max_records: int, client: str) -> float:
    """Readings/s of a bare consumer of ``client`` that decodes every value, from its first assignment."""
    got, marks = 0, {}
    total = 0.0
    if client == "confluent-kafka":
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "session.timeout.ms": 3000, "heartbeat.interval.ms": 500,
                      "fetch.wait.max.ms": 20, "log_level": 2})
        c.subscribe([topic], on_assign=lambda _c, _p: marks.setdefault("assigned", time.perf_counter()))
        while got < n:
            for m in c.consume(num_messages=max_records, timeout=0.2):
                if m.error() is None:
                    total += json.loads(m.value())["value"]
                    got += 1
        t1 = time.perf_counter()
        c.close()
    else:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        class Mark(ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned: object) -> None:
                marks.setdefault("assigned", time.perf_counter())

            def on_partitions_revoked(self, revoked: object) -> None:
                pass

        c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, auto_offset_reset="earliest",
                          enable_auto_commit=False, max_poll_records=max_records, **GROUP_SETTINGS)
        c.subscribe([topic], listener=Mark())
        while got < n:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    total += json.loads(r.value)["value"]
                got += len(recs)
        t1 = time.perf_counter()
        c.close()
    return n / (t1 - marks["assigned"])


def worker_rate(broker: EmbeddedBroker, topic: str, n: int, group: str, max_records: int, state_dir: str,
                alerts: dict | None = None, training: dict | None = None, scoring: dict | None = None,
                client: str = "kafka-python", kafka: dict | None = None) -> tuple[float, float, dict]:
    """Readings/s of the worker from start, and from its first assignment; and details."""
    from streamrnn.daemon.worker import Worker

    cfg = parse_config({
        "kafka": {"client": client, "bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": group,
                  "alerts_topic": f"{topic}-alerts", "dead_letter_topic": f"{topic}-dlq", "max_poll_records": max_records,
                  "poll_timeout_ms": 200, **GROUP_SETTINGS, **(kafka or {})},
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
    assign = w._on_assign

    def assigned(partitions):  # instrumentation only: when the group's first assignment came
        marks.setdefault("assigned", time.perf_counter())
        assign(partitions)

    w._on_assign = assigned  # type: ignore[method-assign]
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
    return n / (t1 - t0), n / (t1 - marks["assigned"]), detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="kafka-python,confluent-kafka")
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-records", type=int, default=5000)
    ap.add_argument("--scores", action="store_true", help="also run the worker with a scores topic")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    clients = args.clients.split(",")

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = "bench"
        broker.create_topics({topic: args.partitions, f"{topic}-alerts": 1, f"{topic}-dlq": 1,
                              f"{topic}-scores": args.partitions})
        t = time.perf_counter()
        fill(broker, topic, args.readings, args.sensors)
        print(f"filled {args.readings} readings over {args.sensors} sensors, {args.partitions} partitions in {time.perf_counter() - t:.1f}s")
        rows: dict[str, list[dict]] = {c: [] for c in clients}
        for r in range(args.rounds):
            for client in clients:
                tag = f"{client}-{r}"
                raw = raw_rate(broker, topic, args.readings, f"raw-{tag}", args.max_records, client)
                _, wk, detail = worker_rate(broker, topic, args.readings, f"worker-{tag}", args.max_records, f"{tmp}/{tag}",
                                            client=client)
                detail.pop("durations"), detail.pop("retrain_in_flight")
                row = {"raw": raw, "worker": wk, "ratio": wk / raw, **detail}
                extra = ""
                if args.scores:
                    _, ws, _ = worker_rate(broker, topic, args.readings, f"scores-{tag}", args.max_records,
                                           f"{tmp}/scores-{tag}", client=client, kafka={"scores_topic": f"{topic}-scores"})
                    row |= {"worker_scores": ws, "scores_ratio": ws / wk}
                    extra = f"  with scores {ws:>9,.0f}/s ({ws / wk:.2f}x)"
                rows[client].append(row)
                print(f"round {r} {client:<16} raw {raw:>9,.0f}/s  worker {wk:>9,.0f}/s  ratio {wk / raw:.2f}  "
                      f"batch p50 {detail['batch_p50_ms']:.1f} ms p99 {detail['batch_p99_ms']:.1f} ms{extra}", flush=True)
        keys = ("raw", "worker", "ratio", "batch_p50_ms", "batch_p99_ms") + (("worker_scores", "scores_ratio") if args.scores else ())
        med = {c: {k: sorted(x[k] for x in v)[len(v) // 2] for k in keys} for c, v in rows.items()}
        print()
        for c, m in med.items():
            print(f"median {c:<16} raw {m['raw']:>9,.0f}/s  worker {m['worker']:>9,.0f}/s  ratio {m['ratio']:.2f}  "
                  f"batch p50 {m['batch_p50_ms']:.1f} ms p99 {m['batch_p99_ms']:.1f} ms (p99/p50 {m['batch_p99_ms'] / m['batch_p50_ms']:.2f})"
                  + (f"  with scores {m['worker_scores']:,.0f}/s ({m['scores_ratio']:.2f}x)" if args.scores else ""))
        if len(med) == 2:
            a, b = clients
            print(f"worker {b} / worker {a}: {med[b]['worker'] / med[a]['worker']:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rows, "median": med}, indent=1))


if __name__ == "__main__":
    main()
