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

__all__ = ["make_windows", "ring_targets", "Trainer", "TrainResult"]


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
    """Fits a :class:`GRUForecaster` with a time/epoch budget and early stopping.

    Data is ``x [N, T, F]`` with next-step targets ``y [N, T]`` and a mask of which
    steps count in a loss, so one set of sequences can hold a training part and a
    held-out most recent part.
    """

    def __init__(self, lr: float = 3e-3, batch_size: int = 64, max_epochs: int = 30, max_seconds: float = 300.0,
                 patience: int = 4, burn_in: int = 32, seed: int = 0) -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_seconds = max_seconds
        self.patience = patience
        self.burn_in = burn_in
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


def ring_targets(x: np.ndarray, lengths: np.ndarray, validation_fraction: float, burn_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets and train/validation masks for history-ring sequences.

    The target of step ``t`` is the normalised value at ``t+1``. The most recent
    ``validation_fraction`` of each sequence is held out: its steps count only in the
    validation loss (the earlier steps are their context).
    """
    n, L = x.shape[:2]
    y = np.zeros((n, L), dtype=np.float32)
    y[:, :-1] = np.clip(x[:, 1:, 0], -Z_CLIP, Z_CLIP)
    steps = np.arange(L)[None, :]
    last = (lengths - 1)[:, None]  # the last real step has no target
    split = (lengths - np.maximum(1, np.round(validation_fraction * lengths)).astype(int))[:, None]
    train = (steps >= burn_in) & (steps < split - 1)
    val = (steps >= split - 1) & (steps < last)
    return y, train, val
