"""Scheduled retraining beside the scoring loop, with a validation gate.

Between two batches the worker asks :class:`Retrainer` whether a run is due (every
``interval_seconds`` and/or every ``every_readings`` scored readings). If so, training
data is cut from the history rings *in the scoring thread* (a small copy: at most
``max_sensors`` sensors, one sequence each, so chatty sensors cannot dominate) and a
background thread fine-tunes a copy of the serving model within its time budget. The
most recent ``validation_fraction`` of every sequence is held out; the candidate is
published to the registry and handed back for a hot swap only if its validation loss
beats the serving model's by ``min_improvement``. Scoring never waits for training.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .config import TrainingConfig
from .core import Detector, GRUForecaster
from .core.training import Trainer, ring_targets
from .metrics import WorkerMetrics
from .registry import ModelRegistry

__all__ = ["Retrainer", "TrainingJob"]

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """A self-contained run: data cut from the rings and the model to start from."""

    x: np.ndarray
    lengths: np.ndarray
    serving: GRUForecaster
    serving_version: str
    window: dict[str, float | int]


class Retrainer:
    """Decides when to retrain, trains in a thread, hands promoted models back."""

    def __init__(self, cfg: TrainingConfig, registry: ModelRegistry | None, metrics: WorkerMetrics, seed: int = 0) -> None:
        """``registry`` None keeps promoted models in memory only (offline scoring)."""
        self.cfg = cfg
        self.registry = registry
        self.metrics = metrics
        self.rng = np.random.default_rng(seed)
        self._thread: threading.Thread | None = None
        self._promoted: queue.Queue[tuple[GRUForecaster, str]] = queue.Queue()
        self._stop = threading.Event()
        self._last_run = time.monotonic()
        self._readings_at_last_run = 0
        self.runs = 0

    @property
    def running(self) -> bool:
        """True while a training thread is at work."""
        return self._thread is not None and self._thread.is_alive()

    def due(self, readings_scored: int) -> bool:
        """Whether the schedule calls for a run now."""
        c = self.cfg
        if not c.enabled or self.running:
            return False
        by_time = c.interval_seconds > 0 and time.monotonic() - self._last_run >= c.interval_seconds
        by_count = c.every_readings > 0 and readings_scored - self._readings_at_last_run >= c.every_readings
        return by_time or by_count

    def maybe_start(self, detector: Detector, readings_scored: int) -> bool:
        """Start a run if one is due and enough history exists; call between batches."""
        if not self.due(readings_scored):
            return False
        self._last_run = time.monotonic()
        self._readings_at_last_run = readings_scored
        job = self.make_job(detector)
        if job is None:
            log.info("retrain skipped: fewer than %d sensors with %d readings of history", self.cfg.min_sensors,
                     self.cfg.min_history)
            return False
        self._thread = threading.Thread(target=self.run, args=(job,), name="retrain", daemon=True)
        self._thread.start()
        return True

    def make_job(self, detector: Detector) -> TrainingJob | None:
        """Cut a training set from the rings (a copy, so scoring can go on)."""
        if not detector.history_length:
            return None
        _, slots = detector.bank.held()
        n = detector.bank.arrays["hist_n"][slots]
        need = min(self.cfg.min_history, detector.history_length)
        slots = slots[n >= need]
        if len(slots) < self.cfg.min_sensors:
            return None
        if len(slots) > self.cfg.max_sensors:
            slots = self.rng.choice(slots, self.cfg.max_sensors, replace=False)
        x, lengths = detector.ring_features(np.sort(slots))
        ts, _, valid = detector.history(np.sort(slots))
        window = {"sensors": int(len(slots)), "readings": int(lengths.sum()),
                  "from_ts": float(ts[valid].min()), "to_ts": float(ts[valid].max())}
        return TrainingJob(x=x, lengths=lengths, serving=copy.deepcopy(detector.model), serving_version=detector.model_version,
                           window=window)

    def run(self, job: TrainingJob) -> str:
        """Train, gate and publish; returns the result label (also counted)."""
        c = self.cfg
        t0 = time.monotonic()
        self.metrics.retrain_in_progress.set(1)
        result = "failed"
        try:
            trainer = Trainer(lr=c.learning_rate, batch_size=c.batch_size, max_epochs=c.max_epochs, max_seconds=c.max_seconds,
                              patience=c.patience, burn_in=c.burn_in, seed=self.runs)
            y, train_mask, val_mask = ring_targets(job.x, job.lengths, c.validation_fraction, c.burn_in)
            serving_loss = trainer.evaluate(job.serving, job.x, y, val_mask)
            candidate = copy.deepcopy(job.serving)
            res = trainer.fit_masked(candidate, job.x, y, train_mask, job.x, y, val_mask, should_stop=self._stop.is_set)
            if self._stop.is_set():
                log.info("retrain cancelled by shutdown")
                result = "cancelled"
                return result
            if not np.isfinite(res.best_val_loss):
                raise FloatingPointError("validation loss is not finite")
            if res.best_val_loss < serving_loss - c.min_improvement:
                if self.registry is not None:
                    version = self.registry.publish(candidate, parent=job.serving_version, training_window=job.window,
                                                    val_loss=res.best_val_loss, parent_val_loss=serving_loss,
                                                    extra={"epochs": res.epochs, "stopped": res.stopped, "seconds": res.seconds}).version
                else:
                    version = f"{job.serving_version.split('+')[0]}+ft{self.runs + 1}"
                self._promoted.put((candidate, version))
                result = "promoted"
                self.metrics.last_retrain_success.set(time.time())
                log.info("retrain promoted %s (validation loss %.4f against %.4f of %s, %d epochs)", version,
                         res.best_val_loss, serving_loss, job.serving_version, res.epochs)
            else:
                result = "rejected"
                log.info("retrain rejected: validation loss %.4f does not beat %.4f of %s by %.4f", res.best_val_loss,
                         serving_loss, job.serving_version, c.min_improvement)
            return result
        except Exception as e:  # training must never take scoring down
            log.error("retrain failed: %s", e, exc_info=not isinstance(e, FloatingPointError))
            result = "failed"
            return result
        finally:
            self.runs += 1
            if result != "cancelled":
                self.metrics.retrain_runs.labels(result=result).inc()
                self.metrics.retrain_seconds.observe(time.monotonic() - t0)
            self.metrics.retrain_in_progress.set(0)

    def take_promoted(self) -> tuple[GRUForecaster, str] | None:
        """A model promoted since the last call, if any (for the hot swap)."""
        try:
            return self._promoted.get_nowait()
        except queue.Empty:
            return None

    def close(self, timeout: float = 10.0) -> None:
        """Cancel a run in progress and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
