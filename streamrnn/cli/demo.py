"""``streamrnn demo``: the whole pipeline on a laptop.

Starts the embedded broker, creates the topics, feeds a synthetic fleet of sensors
with injected anomalies, runs the worker with its metrics endpoint, and prints each
injected anomaly and each alert event as they happen. Stops on Ctrl-C or after
``--duration`` seconds and prints a summary.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import orjson

from ..config import parse_config
from ..devtools.broker import BrokerUnavailable, EmbeddedBroker
from ..devtools.fleet import SensorFleet

__all__ = ["run_demo"]

SENSORS_TOPIC, ALERTS_TOPIC, DLQ_TOPIC = "sensors", "sensor-alerts", "sensor-dlq"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(line: str) -> None:
    print(line, flush=True)


class _Feed(threading.Thread):
    """Produces the synthetic fleet in real time, one tick every 1/rate seconds."""

    def __init__(self, bootstrap: str, sensors: int, rate: float, stop: threading.Event) -> None:
        super().__init__(name="demo-feed", daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1, enable_idempotence=False)
        self.fleet = SensorFleet(sensors, seed=int(time.time()) % 10_000, interval=60.0,
                                 start_ts=time.time() // 60 * 60 - 86400, anomaly_rate=0.0015, clean_ticks=100,
                                 min_gap=300, prefix="pump")
        self.period = 1.0 / rate
        self.stop_event = stop
        self.sent = 0
        self.reported = 0

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop_event.is_set():
            ids, ts, values, _ = self.fleet.step()
            for sid, t, v in zip(ids, ts.tolist(), values.tolist(), strict=True):
                self.producer.send(SENSORS_TOPIC, key=sid.encode(), value=orjson.dumps({"sensor_id": sid, "ts": t, "value": v}))
            self.sent += len(ids)
            if self.fleet.tick % 150 == 0:  # a malformed message now and then shows the dead-letter path
                self.producer.send(SENSORS_TOPIC, key=b"pump-bad", value=b'{"sensor_id": "pump-bad", "ts": "yesterday", "value": 1}')
            for a in self.fleet.started_at(float(ts[0])):
                _say(f"[feed ] injected {a.kind:<11} on {a.sensor_id} at {_iso(a.start_ts)}")
            nxt += self.period
            self.stop_event.wait(max(0.0, nxt - time.monotonic()))
        self.producer.flush(5)
        self.producer.close(5)


class _AlertPrinter(threading.Thread):
    """Reads the alerts topic back and prints each event."""

    def __init__(self, bootstrap: str, stop: threading.Event) -> None:
        super().__init__(name="demo-alerts", daemon=True)
        self.bootstrap = bootstrap
        self.stop_event = stop
        self.count = {"open": 0, "resolved": 0}

    def run(self) -> None:
        from kafka import KafkaConsumer

        c = KafkaConsumer(ALERTS_TOPIC, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                          fetch_max_wait_ms=50, group_id=None, enable_auto_commit=False)
        try:
            while not self.stop_event.is_set():
                for recs in c.poll(timeout_ms=200).values():
                    for r in recs:
                        a = orjson.loads(r.value)
                        self.count[a["event"]] = self.count.get(a["event"], 0) + 1
                        fc = a["forecast"] if a["forecast"] is not None else float("nan")
                        _say(f"[alert] {a['event'].upper():<8} {a['sensor_id']} at {_iso(a['ts'])} value={a['value']:.4g} "
                             f"forecast={fc:.4g} score={a['anomaly_score']:.5f} model={a['model_version']}")
        finally:
            c.close()


def run_demo(duration: float | None = None, sensors: int = 40, metrics_port: int = 9108, rate: float = 10.0) -> int:
    """Run the demo; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("streamrnn.alerts").setLevel(logging.ERROR)  # the printer shows alerts
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the broker's start-up probes are expected to fail
    try:
        broker = EmbeddedBroker().start()
    except BrokerUnavailable as e:
        print(f"streamrnn demo: {e}", file=sys.stderr)
        return 1
    from ..daemon.worker import Worker

    stop = threading.Event()
    feed = printer = None
    try:
        broker.create_topics({SENSORS_TOPIC: 4, ALERTS_TOPIC: 1, DLQ_TOPIC: 1})
        with tempfile.TemporaryDirectory(prefix="streamrnn-demo-") as state_dir:
            cfg = parse_config({
                "kafka": {"bootstrap_servers": [broker.bootstrap], "topics": [SENSORS_TOPIC], "group_id": "streamrnn-demo",
                          "alerts_topic": ALERTS_TOPIC, "dead_letter_topic": DLQ_TOPIC, "session_timeout_ms": 3000,
                          "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 50, "poll_timeout_ms": 200},
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
                "state": {"dir": state_dir, "checkpoint_interval_seconds": 2},
                "alerts": {"log": False},
            })
            worker = Worker(cfg)
            feed = _Feed(broker.bootstrap, sensors, rate, stop)
            printer = _AlertPrinter(broker.bootstrap, stop)

            def on_signal(signum: int, frame: object) -> None:
                stop.set()
                worker.request_stop()

            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            def stop_all() -> None:
                stop.set()
                worker.request_stop()

            if duration is not None:
                threading.Timer(duration, stop_all).start()

            _say(f"[demo ] broker {broker.bootstrap} (embedded tansu), topics {SENSORS_TOPIC} -> {ALERTS_TOPIC}, dead letters -> {DLQ_TOPIC}")
            feed.start()
            printer.start()
            threading.Thread(target=_announce_metrics, args=(worker, stop), daemon=True).start()
            _say(f"[demo ] {sensors} synthetic sensors, {rate:g} readings/s each, one simulated minute per reading; Ctrl-C stops")
            rc = worker.run()
            stop.set()
            feed.join(10)
            printer.join(5)
            m = worker.metrics
            scored = int(m.readings_scored._value.get())
            dead = sum(int(s.value) for s in list(m.dead_letters.collect())[0].samples if s.name.endswith("_total"))
            injected = len(feed.fleet.all_anomalies())
            _say(f"[demo ] done: {feed.sent} readings sent, {scored} scored, {injected} anomalies injected, "
                 f"{printer.count.get('open', 0)} alerts opened, {printer.count.get('resolved', 0)} resolved, {dead} dead letters")
            return rc
    finally:
        stop.set()
        broker.stop()


def _announce_metrics(worker: object, stop: threading.Event) -> None:
    for _ in range(100):
        server = getattr(worker, "server", None)
        if server is not None:
            _say(f"[demo ] metrics at http://127.0.0.1:{server.port}/metrics (health: /healthz, /readyz)")
            return
        if stop.wait(0.1):
            return
