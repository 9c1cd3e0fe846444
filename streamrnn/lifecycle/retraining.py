"""Scheduled retraining beside the scoring loop, with a validation gate.

Between two batches the worker asks :class:`Retrainer` whether a run is due (every
``interval_seconds`` and/or every ``every_readings`` scored readings). If so, training
data is cut from the history rings *in the scoring thread* (a small copy: at most
``max_sensors`` sensors, one sequence each, so chatty sensors cannot dominate) and a
separate process (or, with ``training.process: false``, a thread) fine-tunes a copy of
the serving model within its time budget; a helper thread waits for it. The
most recent ``validation_fraction`` of every sequence is held out; the candidate is
published to the registry and handed back for a hot swap only if the
:class:`~.gate.ValidationGate` passes it. Scoring never waits for training.

What happens is reported to a :class:`RetrainObserver` (the daemon's metrics), so this
module needs no metrics library and offline scoring can retrain too.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters

from ..core import Detector, GRUForecaster
from ..core.parameters import PARAMS
from .datasets import ring_targets
from .gate import ValidationGate
from .registry import ModelRegistry
from .trainer import Trainer, TrainerParams

__all__ = ["NullObserver", "Outcome", "RetrainObserver", "RetrainParams", "RetrainResult", "Retrainer", "TrainingJob",
           "fit_candidate"]

log = logging.getLogger(__name__)


@parameters(frozen=True, kw_only=True, config=PARAMS)
class RetrainParams(TrainerParams):
    """Scheduled retraining inside the worker (beside scoring, never blocking it) and the registry it publishes to."""

    enabled: bool = Field(default=True, description="Retrain on the schedule below.")
    interval_seconds: float = Field(default=3600.0, ge=0, description="Retrain this often (0: no time trigger).")
    every_readings: int = Field(default=0, ge=0, description="Also retrain after this many scored readings (0: no count trigger).")
    min_sensors: int = Field(default=4, ge=1, description="Sensors with enough history needed for a run.")
    min_history: int = Field(default=128, ge=16, description="Readings a sensor's history ring must hold to be used (capped at state.history_length).")
    max_sensors: int = Field(default=512, ge=1, description="Sensors sampled per run, one sequence each (bounds memory; chatty sensors do not dominate).")
    validation_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="Most recent share of every sequence held out for the validation gate.")
    min_improvement: float = Field(default=0.01, ge=0, description="Validation loss (nats) the candidate must gain over the serving model to be promoted.")
    process: bool = Field(default=True, description="Train in a separate process (scoring keeps its own interpreter lock and core); false trains in a thread.")
    registry_keep: int = Field(default=5, ge=1, description="Model versions kept in the registry.")
    registry_poll_seconds: float = Field(default=30.0, gt=0, description="How often the worker checks the registry for a new serving version (rollback, other trainers).")


class RetrainResult(str, Enum):
    """How a retraining run ended (the ``result`` label of the retrain metrics)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RetrainObserver(Protocol):
    """What a retraining run reports (the daemon's metrics implement it)."""

    def retrain_started(self) -> None:
        """A run began."""

    def retrain_finished(self, result: RetrainResult, seconds: float) -> None:
        """A run ended (cancelled runs are reported too)."""

    def model_promoted(self, at: float) -> None:
        """A candidate passed the gate at Unix time ``at``."""


class NullObserver:
    """Reports nowhere (offline scoring)."""

    def retrain_started(self) -> None:
        """Nothing to report."""

    def retrain_finished(self, result: RetrainResult, seconds: float) -> None:
        """Nothing to report."""

    def model_promoted(self, at: float) -> None:
        """Nothing to report."""


@dataclass
class TrainingJob:
    """A self-contained run: data cut from the rings and the model to start from."""

    x: np.ndarray
    lengths: np.ndarray
    serving: GRUForecaster | None
    serving_version: str
    window: dict[str, float | int]


@dataclass
class Outcome:
    """What one training run produced (picklable, so a child process can return it)."""

    result: RetrainResult
    state_dict: dict[str, np.ndarray] | None = None
    val_loss: float = float("nan")
    serving_loss: float = float("nan")
    epochs: int = 0
    stopped: str = ""
    seconds: float = 0.0
    error: str = ""


def _weights(model: GRUForecaster) -> dict[str, np.ndarray]:
    """A model's weights as numpy copies: torch would pass tensors between processes
    through shared-memory handles that vanish when the training process exits."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _load_weights(model: GRUForecaster, weights: dict[str, np.ndarray]) -> GRUForecaster:
    """``model`` with ``weights`` loaded, in eval mode."""
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval()


def fit_candidate(params: RetrainParams, job: TrainingJob, seed: int, should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Fine-tune a copy of the serving model on the job and apply the validation gate."""
    assert job.serving is not None
    trainer = Trainer(params, seed=seed)
    y, train_mask, val_mask = ring_targets(job.x, job.lengths, validation_fraction=params.validation_fraction,
                                           burn_in=params.burn_in)
    serving_loss = trainer.evaluate(job.serving, job.x, y, val_mask)
    candidate = copy.deepcopy(job.serving)
    res = trainer.fit_masked(candidate, job.x, y, train_mask, job.x, y, val_mask, should_stop=should_stop)
    if should_stop is not None and should_stop():
        return Outcome(RetrainResult.CANCELLED)
    if not np.isfinite(res.best_val_loss):
        return Outcome(RetrainResult.FAILED, error="validation loss is not finite")
    verdict = ValidationGate(params.min_improvement).judge(candidate_loss=res.best_val_loss, serving_loss=serving_loss)
    return Outcome(RetrainResult.PROMOTED if verdict.promote else RetrainResult.REJECTED,
                   _weights(candidate) if verdict.promote else None, res.best_val_loss, serving_loss, res.epochs,
                   res.stopped, res.seconds)


def _child_main(conn: Connection, params: RetrainParams, job: TrainingJob, arch: dict[str, int],
                weights: dict[str, np.ndarray], seed: int) -> None:
    """Entry point of the training process: one thread, one run, one result back."""
    torch.set_num_threads(1)
    try:
        job = dataclasses.replace(job, serving=_load_weights(GRUForecaster(**arch), weights))
        outcome = fit_candidate(params, job, seed)
    except Exception as e:
        outcome = Outcome(RetrainResult.FAILED, error=f"{type(e).__name__}: {e}")
    conn.send(outcome)
    conn.close()


class Retrainer:
    """Decides when to retrain, trains beside scoring (a process or a thread), hands promoted models back."""

    def __init__(self, params: RetrainParams, registry: ModelRegistry | None, observer: RetrainObserver | None = None,
                 seed: int = 0) -> None:
        """``registry`` None keeps promoted models in memory only (offline scoring)."""
        self.params = params
        self.registry = registry
        self.observer: RetrainObserver = observer or NullObserver()
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
        c = self.params
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
            log.info("retrain skipped: fewer than %d sensors with %d readings of history", self.params.min_sensors,
                     self.params.min_history)
            return False
        target = self._run_in_child if self.params.process else self.run
        self._thread = threading.Thread(target=target, args=(job,), name="retrain", daemon=True)
        self._thread.start()
        return True

    def make_job(self, detector: Detector) -> TrainingJob | None:
        """Cut a training set from the rings (a copy, so scoring can go on)."""
        if not detector.history_length:
            return None
        _, slots = detector.bank.held()
        n = detector.bank.arrays["hist_n"][slots]
        need = min(self.params.min_history, detector.history_length)
        slots = slots[n >= need]
        if len(slots) < self.params.min_sensors:
            return None
        if len(slots) > self.params.max_sensors:
            slots = self.rng.choice(slots, self.params.max_sensors, replace=False)
        x, lengths, ts = detector.ring_features(np.sort(slots))
        real = ts[np.arange(ts.shape[1])[None, :] < lengths[:, None]]
        window: dict[str, float | int] = {"sensors": int(len(slots)), "readings": int(lengths.sum()),
                                          "from_ts": float(real.min()), "to_ts": float(real.max())}
        return TrainingJob(x=x, lengths=lengths, serving=copy.deepcopy(detector.model), serving_version=detector.model_version,
                           window=window)

    def run(self, job: TrainingJob) -> RetrainResult:
        """Train in this thread, gate and publish; returns the result (also reported)."""
        t0 = time.monotonic()
        self.observer.retrain_started()
        try:
            outcome = fit_candidate(self.params, job, self.runs, self._stop.is_set)
        except Exception as e:  # training must never take scoring down
            outcome = Outcome(RetrainResult.FAILED, error=f"{type(e).__name__}: {e}")
        return self._finish(job, outcome, t0)

    def _run_in_child(self, job: TrainingJob) -> RetrainResult:
        """Train in a separate process (no GIL shared with scoring), then gate and publish here."""
        assert job.serving is not None
        t0 = time.monotonic()
        self.observer.retrain_started()
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        weights = _weights(job.serving)
        proc = ctx.Process(target=_child_main, args=(send, self.params, dataclasses.replace(job, serving=None),
                                                     job.serving.arch(), weights, self.runs),
                           name="streamrnn-retrain", daemon=True)
        try:
            proc.start()
            send.close()
            outcome = Outcome(RetrainResult.FAILED, error="training process exited without a result")
            while not self._stop.is_set():
                if recv.poll(0.2):
                    outcome = recv.recv()
                    break
                if not proc.is_alive():
                    break
            else:
                outcome = Outcome(RetrainResult.CANCELLED)
        except Exception as e:
            outcome = Outcome(RetrainResult.FAILED, error=f"{type(e).__name__}: {e}")
        finally:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            recv.close()
        return self._finish(job, outcome, t0)

    def _finish(self, job: TrainingJob, outcome: Outcome, t0: float) -> RetrainResult:
        result = outcome.result
        try:
            if result is RetrainResult.PROMOTED:
                assert job.serving is not None and outcome.state_dict is not None
                candidate = _load_weights(copy.deepcopy(job.serving), outcome.state_dict)
                version = self._publish(job, outcome, candidate)
                self._promoted.put((candidate, version))
                self.observer.model_promoted(time.time())
                log.info("retrain promoted %s (validation loss %.4f against %.4f of %s, %d epochs)", version,
                         outcome.val_loss, outcome.serving_loss, job.serving_version, outcome.epochs)
            elif result is RetrainResult.REJECTED:
                log.info("retrain rejected: validation loss %.4f does not beat %.4f of %s by %.4f", outcome.val_loss,
                         outcome.serving_loss, job.serving_version, self.params.min_improvement)
            elif result is RetrainResult.CANCELLED:
                log.info("retrain cancelled by shutdown")
            else:
                log.error("retrain failed: %s", outcome.error)
        except Exception as e:  # publishing failed: the serving model stays
            log.error("retrain failed while publishing: %s", e)
            result = RetrainResult.FAILED
        finally:
            self.runs += 1
            self.observer.retrain_finished(result, time.monotonic() - t0)
        return result

    def _publish(self, job: TrainingJob, outcome: Outcome, candidate: GRUForecaster) -> str:
        """The version name of a promoted candidate (written to the registry when there is one)."""
        if self.registry is None:
            return f"{job.serving_version.split('+')[0]}+ft{self.runs + 1}"
        extra: dict[str, Any] = {"epochs": outcome.epochs, "stopped": outcome.stopped, "seconds": outcome.seconds}
        return self.registry.publish(candidate, parent=job.serving_version, training_window=job.window,
                                     val_loss=outcome.val_loss, parent_val_loss=outcome.serving_loss, extra=extra).version

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
