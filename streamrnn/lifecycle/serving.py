"""Which model the detector serves, and the hot swaps that change it.

At start a worker serves the registry's current version (when there is one), else the
configured model file, else the model shipped in the package. While it runs,
:class:`ModelService` swaps in what scheduled retraining promotes and follows the
registry's ``CURRENT`` pointer, so a rollback or another trainer's version reaches
every worker. Swaps happen between batches and re-warm every sensor's hidden state.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

from ..core import AlertParams, BankParams, Detector, GRUForecaster, ScoringParams
from .artifacts import ModelFile, default_model_path, load_model
from .registry import ModelRegistry, RegistryError
from .retraining import Retrainer, RetrainObserver

__all__ = ["LifecycleObserver", "ModelService", "load_serving", "serving_detector"]

log = logging.getLogger(__name__)


def load_serving(registry: ModelRegistry | None, model_path: str | None) -> ModelFile:
    """The registry's current version (when a registry is given and names one that
    loads), else the model file at ``model_path``, else the packaged default."""
    mf = registry.load_serving() if registry is not None else None
    if mf is not None:
        log.info("serving registry model %s (sha256 %s)", mf.version, mf.sha256[:12])
        return mf
    path = Path(model_path) if model_path else default_model_path()
    mf = load_model(path)
    log.info("loaded model %s from %s (sha256 %s)", mf.version, path, mf.sha256[:12])
    return mf


def serving_detector(registry: ModelRegistry | None, model_path: str | None, *, scoring: ScoringParams, alerts: AlertParams,
                     bank: BankParams) -> Detector:
    """A detector with these parameters, serving what :func:`load_serving` picks."""
    mf = load_serving(registry, model_path)
    return Detector(mf.model, version=mf.version, scoring=scoring, alerts=alerts, bank=bank)


class LifecycleObserver(RetrainObserver, Protocol):
    """What the model lifecycle reports: retraining runs, and which model serves."""

    def model_serving(self, version: str, *, swapped: bool) -> None:
        """The detector serves ``version`` (from the next batch on, when ``swapped``)."""


class ModelService:
    """Keeps the detector on the right model, between batches.

    ``tick`` (once per poll loop turn) swaps in a promoted candidate, starts a
    retraining run when one is due, and every ``poll_seconds`` serves the registry's
    current version if it changed.
    """

    def __init__(self, detector: Detector, registry: ModelRegistry, retrainer: Retrainer | None, *, poll_seconds: float,
                 observer: LifecycleObserver) -> None:
        self.detector = detector
        self.registry = registry
        self.retrainer = retrainer
        self.poll_seconds = poll_seconds
        self.observer = observer
        self._last_poll = time.monotonic()
        observer.model_serving(detector.model_version, swapped=False)
        observer.model_promoted(self.serving_since())

    def serving_since(self) -> float:
        """When the serving model was made (its registry entry), or for a model from a
        file, when this deployment first served one."""
        try:
            return self.registry.meta(self.detector.model_version).created
        except (RegistryError, OSError, ValueError, TypeError):
            return self.registry.first_served()

    def tick(self, readings_scored: int) -> None:
        """Swap, retrain and follow the registry as due; call between batches."""
        if self.retrainer is not None:
            promoted = self.retrainer.take_promoted()
            if promoted is not None:
                self.swap(*promoted)
            self.retrainer.maybe_start(self.detector, readings_scored)
        if time.monotonic() - self._last_poll >= self.poll_seconds:
            self._last_poll = time.monotonic()
            self.follow_registry()

    def follow_registry(self) -> None:
        """Serve the registry's current version when it changed (rollback, another trainer)."""
        cur = self.registry.current()
        if cur is None or cur == self.detector.model_version:
            return
        mf = self.registry.load_serving()
        if mf is not None and mf.version != self.detector.model_version:
            self.swap(mf.model, mf.version)
            self.observer.model_promoted(self.serving_since())

    def swap(self, model: GRUForecaster, version: str) -> None:
        """Serve another model from the next batch on (hidden states re-warmed)."""
        t0 = time.perf_counter()
        old = self.detector.model_version
        n = self.detector.swap_model(model, version)
        self.observer.model_serving(version, swapped=True)
        log.info("serving model %s (was %s); re-warmed %d sensors in %.2fs", version, old, n, time.perf_counter() - t0)

    def close(self) -> None:
        """Cancel a retraining run in progress."""
        if self.retrainer is not None:
            self.retrainer.close()
