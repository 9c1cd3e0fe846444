"""Scheduled retraining beside the scoring loop, with a validation gate.

Between two batches the worker asks :class:`Retrainer` whether a run is due (every
``interval_seconds`` and/or every ``every_readings`` scored readings). If so, training
data is cut from the history rings *in the scoring thread* (a small copy: at most
``max_sensors`` sensors, one sequence each, so chatty sensors cannot dominate) and a
separate process (or, with ``training.process: false``, a thread) fine-tunes a copy of
the serving model within its time budget; a helper thread waits for it. The
most recent ``validation_fraction`` of every sequence is held out; the candidate is
published to the registry and handed back for a hot swap only if its validation loss
beats the serving model's by ``min_improvement``. Scoring never waits for training.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainingConfig
from .core import Detector, GRUForecaster
from .core.training import Trainer, ring_targets
from .metrics import WorkerMetrics
from .registry import ModelRegistry

__all__ = ["Retrainer", "TrainingJob", "Outcome", "fit_candidate"]

log = logging.getLogger(__name__)


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

    result: str
    state_dict: dict | None = None
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


def fit_candidate(cfg: TrainingConfig, job: TrainingJob, seed: int, should_stop=None) -> Outcome:
    """Fine-tune a copy of the serving model on the job and apply the validation gate."""
    trainer = Trainer(lr=cfg.learning_rate, batch_size=cfg.batch_size, max_epochs=cfg.max_epochs, max_seconds=cfg.max_seconds,
                      patience=cfg.patience, burn_in=cfg.burn_in, seed=seed)
    y, train_mask, val_mask = ring_targets(job.x, job.lengths, cfg.validation_fraction, cfg.burn_in)
    serving_loss = trainer.evaluate(job.serving, job.x, y, val_mask)
    candidate = copy.deepcopy(job.serving)
    res = trainer.fit_masked(candidate, job.x, y, train_mask, job.x, y, val_mask, should_stop=should_stop)
    if should_stop is not None and should_stop():
        return Outcome("cancelled")
    if not np.isfinite(res.best_val_loss):
        return Outcome("failed", error="validation loss is not finite")
    promoted = res.best_val_loss < serving_loss - cfg.min_improvement
    return Outcome("promoted" if promoted else "rejected", _weights(candidate) if promoted else None,
                   res.best_val_loss, serving_loss, res.epochs, res.stopped, res.seconds)


def _child_main(conn, cfg: TrainingConfig, job: TrainingJob, arch: dict, weights: dict, seed: int) -> None:
    """Entry point of the training process: one thread, one run, one result back."""
    torch.set_num_threads(1)
    try:
        job = dataclasses.replace(job, serving=_load_weights(GRUForecaster(**arch), weights))
        outcome = fit_candidate(cfg, job, seed)
    except Exception as e:
        outcome = Outcome("failed", error=f"{type(e).__name__}: {e}")
    conn.send(outcome)
    conn.close()


class Retrainer:
    """Decides when to retrain, trains beside scoring (a process or a thread), hands promoted models back."""

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
        target = self._run_in_child if self.cfg.process else self.run
        self._thread = threading.Thread(target=target, args=(job,), name="retrain", daemon=True)
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
        x, lengths, ts = detector.ring_features(np.sort(slots))
        real = ts[np.arange(ts.shape[1])[None, :] < lengths[:, None]]
        window = {"sensors": int(len(slots)), "readings": int(lengths.sum()),
                  "from_ts": float(real.min()), "to_ts": float(real.max())}
        return TrainingJob(x=x, lengths=lengths, serving=copy.deepcopy(detector.model), serving_version=detector.model_version,
                           window=window)

    def run(self, job: TrainingJob) -> str:
        """Train in this thread, gate and publish; returns the result label (also counted)."""
        t0 = time.monotonic()
        self.metrics.retrain_in_progress.set(1)
        try:
            outcome = fit_candidate(self.cfg, job, self.runs, self._stop.is_set)
        except Exception as e:  # training must never take scoring down
            outcome = Outcome("failed", error=f"{type(e).__name__}: {e}")
        return self._finish(job, outcome, t0)

    def _run_in_child(self, job: TrainingJob) -> str:
        """Train in a separate process (no GIL shared with scoring), then gate and publish here."""
        t0 = time.monotonic()
        self.metrics.retrain_in_progress.set(1)
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        weights = _weights(job.serving)
        proc = ctx.Process(target=_child_main, args=(send, self.cfg, dataclasses.replace(job, serving=None), job.serving.arch(),
                                                     weights, self.runs), name="streamrnn-retrain", daemon=True)
        try:
            proc.start()
            send.close()
            outcome = Outcome("failed", error="training process exited without a result")
            while not self._stop.is_set():
                if recv.poll(0.2):
                    outcome = recv.recv()
                    break
                if not proc.is_alive():
                    break
            else:
                outcome = Outcome("cancelled")
        except Exception as e:
            outcome = Outcome("failed", error=f"{type(e).__name__}: {e}")
        finally:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            recv.close()
        return self._finish(job, outcome, t0)

    def _finish(self, job: TrainingJob, outcome: Outcome, t0: float) -> str:
        c = self.cfg
        result = outcome.result
        try:
            if result == "promoted":
                candidate = _load_weights(copy.deepcopy(job.serving), outcome.state_dict)
                if self.registry is not None:
                    version = self.registry.publish(candidate, parent=job.serving_version, training_window=job.window,
                                                    val_loss=outcome.val_loss, parent_val_loss=outcome.serving_loss,
                                                    extra={"epochs": outcome.epochs, "stopped": outcome.stopped,
                                                           "seconds": outcome.seconds}).version
                else:
                    version = f"{job.serving_version.split('+')[0]}+ft{self.runs + 1}"
                self._promoted.put((candidate, version))
                self.metrics.last_retrain_success.set(time.time())
                log.info("retrain promoted %s (validation loss %.4f against %.4f of %s, %d epochs)", version,
                         outcome.val_loss, outcome.serving_loss, job.serving_version, outcome.epochs)
            elif result == "rejected":
                log.info("retrain rejected: validation loss %.4f does not beat %.4f of %s by %.4f", outcome.val_loss,
                         outcome.serving_loss, job.serving_version, c.min_improvement)
            elif result == "cancelled":
                log.info("retrain cancelled by shutdown")
            else:
                log.error("retrain failed: %s", outcome.error)
        except Exception as e:  # publishing failed: the serving model stays
            log.error("retrain failed while publishing: %s", e)
            result = "failed"
        finally:
            self.runs += 1
            if result != "cancelled":
                self.metrics.retrain_runs.labels(result=result).inc()
                self.metrics.retrain_seconds.observe(time.monotonic() - t0)
            self.metrics.retrain_in_progress.set(0)
        return result

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
