"""Training the forecaster on sensor histories (Gaussian negative log-likelihood).

:func:`make_windows` turns per-sensor series into input windows with exactly the
features the live detector computes (it runs the same :class:`FeatureBuilder`);
:class:`Trainer` fits a model to them within a time and epoch budget with early
stopping on a held-out slice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .features import N_FEATURES, Z_CLIP, FeatureBuilder
from .model import GRUForecaster
from .state import StateBank

__all__ = ["make_windows", "Trainer", "TrainResult"]


def make_windows(ts: np.ndarray, values: np.ndarray, window: int = 256, stride: int = 128,
                 normaliser_halflife: float = 2000.0) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``x [N, window, F]`` and next-value targets ``y [N, window]``.

    ``ts`` and ``values`` are ``[sensors, T]`` matrices, each row one sensor in time
    order. Features come from a fresh normaliser run over each whole row, exactly as
    the detector would compute them (one vectorised step per time index).
    """
    ts = np.atleast_2d(np.asarray(ts, dtype=np.float64))
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_s, n_t = values.shape
    if n_t < window + 1 or n_s == 0:
        return np.zeros((0, window, N_FEATURES), np.float32), np.zeros((0, window), np.float32)
    fb = FeatureBuilder(normaliser_halflife)
    bank = StateBank(fb.columns(), max_sensors=n_s, initial_capacity=n_s)
    slots = bank.assign([str(i) for i in range(n_s)])
    feats = np.empty((n_s, n_t, N_FEATURES), dtype=np.float32)
    for t in range(n_t):
        feats[:, t], _, _ = fb.step(bank.arrays, slots, ts[:, t], values[:, t])
    target = np.clip(feats[:, 1:, 0], -Z_CLIP, Z_CLIP)
    starts = range(0, n_t - 1 - window + 1, stride)
    x = np.concatenate([feats[:, s:s + window] for s in starts])
    y = np.concatenate([target[:, s:s + window] for s in starts])
    return x, y.astype(np.float32)


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
    """Fits a :class:`GRUForecaster` to windows with a budget and early stopping."""

    def __init__(self, lr: float = 3e-3, batch_size: int = 64, max_epochs: int = 30, max_seconds: float = 300.0,
                 patience: int = 4, burn_in: int = 32, seed: int = 0) -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_seconds = max_seconds
        self.patience = patience
        self.burn_in = burn_in
        self.seed = seed

    def loss(self, model: GRUForecaster, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian NLL after the burn-in steps (the state starts from zero)."""
        mean, logvar, _ = model(x)
        b = self.burn_in
        return nn.functional.gaussian_nll_loss(mean[:, b:], y[:, b:], logvar[:, b:].exp(), full=False, eps=1e-6)

    def evaluate(self, model: GRUForecaster, x: np.ndarray, y: np.ndarray) -> float:
        """Mean loss over windows, without gradients."""
        if len(x) == 0:
            return float("nan")
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(x), 256):
                xb, yb = torch.from_numpy(x[i:i + 256]), torch.from_numpy(y[i:i + 256])
                total += float(self.loss(model, xb, yb)) * len(xb)
                n += len(xb)
        return total / n

    def fit(self, model: GRUForecaster, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            on_epoch: Callable[[int, float, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train in place; keeps the weights of the best validation epoch."""
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        t0 = time.monotonic()
        best = self.evaluate(model, x_val, y_val)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        train_hist: list[float] = []
        val_hist: list[float] = []
        bad, stopped, epoch = 0, "max_epochs", 0
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            perm = torch.randperm(len(xt), generator=g)
            tot, cnt = 0.0, 0
            for i in range(0, len(perm), self.batch_size):
                idx = perm[i:i + self.batch_size]
                loss = self.loss(model, xt[idx], yt[idx])
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
            v = self.evaluate(model, x_val, y_val)
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
