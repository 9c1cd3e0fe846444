"""Real Prometheus and Alertmanager (Debian packages) started by hand on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamrnn.devtools.broker import free_port


def require(binary: str) -> str:
    """Path of a binary; skips the test without it unless CI demands the tools."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("STREAMRNN_REQUIRE_OPS_TOOLS"):
            pytest.fail(f"{binary} is not installed (CI installs Debian's prometheus and prometheus-alertmanager)")
        pytest.skip(f"{binary} not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def http_json(url: str, data: bytes | None = None, timeout: float = 5.0) -> object:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(7)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Prometheus:
    """A Prometheus server scraping the given targets as job `streamrnn` every second."""

    def __init__(self, workdir: Path, targets: list[str], rules: Path | None = None) -> None:
        binary = require("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        cfg: dict = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "streamrnn", "static_configs": [{"targets": targets}]}],
        }
        if rules is not None:
            shutil.copy(rules, workdir / "rules.yml")
            cfg["rule_files"] = ["rules.yml"]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/-/ready", self.proc)

    def query(self, expr: str) -> list:
        q = urllib.parse.urlencode({"query": expr})
        body = http_json(f"{self.url}/api/v1/query?{q}")
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.query(expr)
            if res:
                return res
            time.sleep(0.25)
        raise AssertionError(f"no series for {expr!r} after {timeout}s")

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


class Alertmanager:
    """An Alertmanager with gossip off, routing everything to one webhook receiver."""

    def __init__(self, workdir: Path, webhook_url: str, group_by: tuple[str, ...] = ("alertname", "sensor_id")) -> None:
        binary = require("prometheus-alertmanager")
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "route": {"receiver": "hook", "group_by": list(group_by), "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
        }
        (workdir / "am.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "alertmanager.log", "wb")
        self.proc = subprocess.Popen([binary, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(f"{self.url}/-/ready", self.proc)

    def alerts(self) -> list:
        return http_json(f"{self.url}/api/v2/alerts")  # type: ignore[return-value]

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


class WebhookReceiver:
    """An HTTP server on loopback that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [b for b in list(self.received) if predicate(b)]
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"nothing matching arrived in {timeout}s; received {self.received!r:.2000}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
