"""Reaching the broker: connect and poll with one backoff, and say whether it is up.

An unreachable broker never stops the worker. Connecting and polling are retried with
the same exponential backoff with jitter (``kafka.reconnect_backoff_*``), each retry
logged and counted (``streamrnn_broker_connection_retries_total``), and the broker is
reported down (``streamrnn_broker_up 0``, ``/readyz`` 503) until a request succeeds.
A stop request ends the waiting at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from ..config import KafkaConfig
from .metrics import WorkerMetrics
from .transport.base import Batch, Transport, TransportError

__all__ = ["BrokerLink"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class BrokerLink:
    """Retries what needs the broker and keeps ``streamrnn_broker_up`` true."""

    def __init__(self, cfg: KafkaConfig, *, stop: threading.Event, metrics: WorkerMetrics) -> None:
        self.cfg = cfg
        self.stop = stop
        self.metrics = metrics
        self.up = False

    def report(self, up: bool) -> None:
        """Record whether the broker answers (logged when it changes)."""
        if up != self.up:
            (log.info if up else log.warning)("broker %s", "reachable" if up else "unreachable")
        self.up = up
        self.metrics.broker_up.set(1 if up else 0)

    def _before_sleep(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            self.metrics.broker_retries.inc()
            self.report(False)
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: broker %s unreachable (%s); retry %d in %.1fs", what, ",".join(self.cfg.bootstrap_servers), exc,
                        state.attempt_number, state.next_action.sleep if state.next_action else 0)
        return before_sleep

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)  # a stop request ends the wait at once

    def _retry(self, what: str, fn: Callable[[], T]) -> T | None:
        """``fn()`` retried on TransportError/OSError until it succeeds; None once a stop is requested."""
        retrying = Retrying(
            retry=retry_if_exception_type((TransportError, OSError)),
            wait=wait_exponential_jitter(initial=self.cfg.reconnect_backoff_initial_seconds,
                                         max=self.cfg.reconnect_backoff_max_seconds),
            stop=lambda _state: self.stop.is_set(), before_sleep=self._before_sleep(what), sleep=self._sleep,
            reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    if self.stop.is_set():
                        return None
                    return fn()
        except (TransportError, OSError, RetryError):
            return None  # only reached when a stop was requested during the retries
        return None

    def connect(self, factory: Callable[[], Transport]) -> Transport | None:
        """A connected transport from ``factory``, retried until it connects or a stop is requested."""
        transport = self._retry("connect", factory)
        if transport is not None:
            self.report(True)
        return transport

    def poll(self, transport: Transport) -> Batch | None:
        """One poll batch, retried through an outage; None once a stop is requested."""
        return self._retry("poll", lambda: transport.poll(self.cfg.poll_timeout_ms))
