"""The worker's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` says the process is alive; ``/readyz`` runs the worker's readiness checks
(partitions assigned, broker reachable, ...) and answers 503 naming the failing one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from .metrics import WorkerMetrics

__all__ = ["MetricsServer"]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: do not log each
        pass


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` in a background thread."""

    def __init__(self, metrics: WorkerMetrics, ready: Callable[[], dict[str, bool]], *, host: str, port: int) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._ready = ready
        self._server = make_server(host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            checks = self._ready()
            ok = all(checks.values())
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"ready": ok, "checks": checks}).encode() + b"\n"]
        return self._metrics_app(environ, start_response)

    def start(self) -> MetricsServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
