"""Fitting the forecaster (Gaussian negative log-likelihood) within a budget.

:class:`Trainer` fits a model to sequences cut by :mod:`.datasets`, within a time and
epoch budget, with early stopping on a held-out part; :class:`TrainerParams` holds its
settings (the ``training`` section of the configuration extends them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters
from torch import nn

from ..core.forecaster import GRUForecaster
from ..core.parameters import PARAMS

__all__ = ["TrainResult", "Trainer", "TrainerParams"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class TrainerParams:
    """How one training run fits the forecaster."""

    max_seconds: float = Field(default=120.0, gt=0, description="Time budget of one run.")
    max_epochs: int = Field(default=20, ge=1, description="Epoch budget of one run.")
    patience: int = Field(default=3, ge=1, description="Epochs without validation gain before stopping early.")
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate for fine-tuning.")
    batch_size: int = Field(default=64, ge=1, description="Sequences per optimisation step.")
    burn_in: int = Field(default=16, ge=0, description="Steps of each sequence that only warm the state (no loss).")


@dataclass
class TrainResult:
    """Outcome of one fit: losses per epoch, the best validation loss, and why it stopped."""

    train_loss: list[float]
    val_loss: list[float]
    best_val_loss: float
    epochs: int
    seconds: float
    stopped: str


class Trainer:
    """Fits a :class:`GRUForecaster` with a time/epoch budget and early stopping.

    Data is ``x [N, T, F]`` with next-step targets ``y [N, T]`` and a mask of which
    steps count in a loss, so one set of sequences can hold a training part and a
    held-out most recent part.
    """

    def __init__(self, params: TrainerParams, *, seed: int = 0) -> None:
        self.params = params
        self.lr = params.learning_rate
        self.batch_size = params.batch_size
        self.max_epochs = params.max_epochs
        self.max_seconds = params.max_seconds
        self.patience = params.patience
        self.burn_in = params.burn_in
        self.seed = seed

    @staticmethod
    def loss(model: GRUForecaster, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood over the masked steps."""
        mean, logvar, _ = model(x)
        nll = 0.5 * (logvar + (y - mean) ** 2 / logvar.exp())
        m = mask.to(nll.dtype)
        return (nll * m).sum() / m.sum().clamp_min(1.0)

    def burn_in_mask(self, y: np.ndarray) -> np.ndarray:
        """Every step after the burn-in (the state starts from zero)."""
        mask = np.zeros(y.shape, dtype=bool)
        mask[:, self.burn_in:] = True
        return mask

    def evaluate(self, model: GRUForecaster, x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Mean masked loss over all sequences, without gradients."""
        if len(x) == 0:
            return float("nan")
        mask = self.burn_in_mask(y) if mask is None else mask
        model.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(x), 256):
                mb = torch.from_numpy(mask[i:i + 256])
                w = float(mb.sum())
                if w:
                    total += float(self.loss(model, torch.from_numpy(x[i:i + 256]), torch.from_numpy(y[i:i + 256]), mb)) * w
                    weight += w
        return total / weight if weight else float("nan")

    def fit(self, model: GRUForecaster, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            on_epoch: Callable[[int, float, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train on windows, validate on other windows (both after the burn-in)."""
        return self.fit_masked(model, x, y, self.burn_in_mask(y), x_val, y_val, self.burn_in_mask(y_val), on_epoch, should_stop)

    def fit_masked(self, model: GRUForecaster, x: np.ndarray, y: np.ndarray, mask: np.ndarray, x_val: np.ndarray,
                   y_val: np.ndarray, mask_val: np.ndarray, on_epoch: Callable[[int, float, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train in place; keeps the weights of the best validation epoch.

        Raises ``FloatingPointError`` when the training loss stops being finite.
        """
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        t0 = time.monotonic()
        best = self.evaluate(model, x_val, y_val, mask_val)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        train_hist: list[float] = []
        val_hist: list[float] = []
        bad, stopped, epoch = 0, "max_epochs", 0
        xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            perm = torch.randperm(len(xt), generator=g)
            tot, cnt = 0.0, 0
            for i in range(0, len(perm), self.batch_size):
                idx = perm[i:i + self.batch_size]
                loss = self.loss(model, xt[idx], yt[idx], mt[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError("training loss is not finite")
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                tot += loss.item() * len(idx)
                cnt += len(idx)
                if time.monotonic() - t0 > self.max_seconds or (should_stop and should_stop()):
                    break
            train_hist.append(tot / max(cnt, 1))
            v = self.evaluate(model, x_val, y_val, mask_val)
            val_hist.append(v)
            if on_epoch:
                on_epoch(epoch, train_hist[-1], v)
            if v < best or not np.isfinite(best):
                best, bad = v, 0
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
            if bad >= self.patience:
                stopped = "early_stopping"
                break
            if time.monotonic() - t0 > self.max_seconds:
                stopped = "time_budget"
                break
            if should_stop and should_stop():
                stopped = "cancelled"
                break
        model.load_state_dict(best_state)
        model.eval()
        return TrainResult(train_hist, val_hist, best, epoch, time.monotonic() - t0, stopped)
