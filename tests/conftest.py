"""Shared fixtures: a real tansu broker per test session, helpers to run the worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from streamrnn.devtools.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent

# Every test that runs the worker runs once per Kafka client (kafka.client).
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")
_client = {"name": KAFKA_CLIENTS[0]}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "run_worker" in metafunc.fixturenames:
        metafunc.fixturenames.append("kafka_client")
        metafunc.parametrize("kafka_client", KAFKA_CLIENTS, indirect=True)


@pytest.fixture
def kafka_client(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Kafka client the workers of this test use (``worker_config`` writes it)."""
    _client["name"] = request.param
    try:
        yield request.param
    finally:
        _client["name"] = KAFKA_CLIENTS[0]


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EmbeddedBroker]]:
    """One tansu broker per Kafka client, started on first use on a free loopback port
    and stopped by PID at the end (so each client's run of a test sees fresh topics)."""
    started: dict[str, EmbeddedBroker] = {}
    yield started
    for broker in started.values():
        broker.stop()


@pytest.fixture
def kafka(request: pytest.FixtureRequest, brokers: dict[str, EmbeddedBroker], tmp_path_factory: pytest.TempPathFactory) -> EmbeddedBroker:
    """The broker of this test's Kafka client."""
    callspec = getattr(request.node, "callspec", None)
    client = callspec.params.get("kafka_client", KAFKA_CLIENTS[0]) if callspec is not None else KAFKA_CLIENTS[0]
    if client not in brokers:
        log = tmp_path_factory.mktemp("tansu") / f"tansu-{client}.log"
        brokers[client] = EmbeddedBroker(log_path=log).start()
    return brokers[client]


def worker_config(broker: EmbeddedBroker, tmp: Path, topic: str, **overrides: dict) -> tuple[Path, int]:
    """Write a worker YAML for a test; returns (path, metrics port)."""
    port = free_port()
    cfg = {
        "kafka": {
            "client": _client["name"],
            "bootstrap_servers": [broker.bootstrap], "topics": [topic], "group_id": f"g-{topic}",
            "alerts_topic": f"{topic}-alerts", "dead_letter_topic": f"{topic}-dlq",
            # fast group joins and low fetch latency against tansu (KAFKA-TEST-NOTES.md)
            "session_timeout_ms": 3000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 20, "poll_timeout_ms": 200,
            "reconnect_backoff_initial_seconds": 0.2, "reconnect_backoff_max_seconds": 1.0,
            "connect_timeout_seconds": 1.0,
        },
        "metrics": {"host": "127.0.0.1", "port": port},
        "state": {"dir": str(tmp / "state"), "checkpoint_interval_seconds": 0.5},
        "alerts": {"log": False},
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, port


class WorkerProcess:
    """`streamrnn run` in a subprocess, with its metrics endpoint."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamrnn", "run", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of one metric (optionally matching labels); 0 if absent."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += s.value
        return total

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read() or b"{}") if path == "/readyz" else {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_metric(self, name: str, at_least: float, timeout: float = 60.0, labels: dict[str, str] | None = None) -> float:
        deadline = time.monotonic() + timeout
        value = -1.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                value = self.metric(name, labels)
                if value >= at_least:
                    return value
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} reached {value}, expected >= {at_least}\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A local S3 (moto_server on loopback) with bucket ``tansu``: the environment that
    points tansu's ``s3://tansu/`` storage at it. Stopped by PID at the end."""
    import shutil
    import urllib.error

    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed (pip install -e '.[test]')")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.1)
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket="tansu")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def run_worker(tmp_path: Path) -> Iterator:
    """Start workers from configs; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(config: Path, port: int) -> WorkerProcess:
        w = WorkerProcess(config, port, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def as_messages(df) -> list[tuple[bytes, bytes]]:
    """Rows ``sensor_id, ts, value`` of a frame as keyed JSON messages."""
    import orjson

    return [(s.encode(), orjson.dumps({"sensor_id": s, "ts": t, "value": v}))
            for s, t, v in zip(df.sensor_id.tolist(), df.ts.tolist(), df.value.tolist())]


def produce(kafka: EmbeddedBroker, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce keyed messages fast with confluent-kafka (placement as Java clients: murmur2)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random",
                  "log_level": 2})
    for i, (k, v) in enumerate(messages):
        while True:
            try:
                p.produce(topic, key=k, value=v)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def consume_all(kafka: EmbeddedBroker, topic: str, expect: int | None = None, timeout: float = 20.0, idle: float = 2.0) -> list:
    """Read a topic from the start until `expect` records arrived, or (no count given)
    until nothing new came for `idle` seconds, or `timeout` passed."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", group_id=None,
                      fetch_max_wait_ms=20)
    out: list = []
    start = last = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            got = [r for recs in c.poll(timeout_ms=200).values() for r in recs]
            if got:
                out.extend(got)
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last > idle:
                break
    finally:
        c.close()
    return out
