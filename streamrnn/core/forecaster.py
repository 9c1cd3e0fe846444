"""The GRU forecaster: a torch module for training, compiled steps for scoring.

The network reads one feature vector per reading (see :mod:`.features`) and, from its
hidden state after reading ``t``, forecasts the normalised value of reading ``t+1`` as
a Gaussian: a mean (a correction added to the current normalised value, so that
persistence is the easy default) and a log-variance, trained with the Gaussian
negative log-likelihood. The variance lets the scorer judge a residual against the
forecast's own uncertainty.

Training uses the torch module; scoring runs the same network one reading at a time
in compiled code (:func:`gru_step`, on the weights exported by :func:`weights_of`),
because a stream's readings arrive one sensor-step at a time and a torch call per
step costs more than the step itself. The two agree to float32 rounding.

How a model is stored (checksummed files, ``weights_only=True``) is the model
lifecycle's business: :mod:`streamrnn.lifecycle.artifacts`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from numba import njit
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .features import N_FEATURES

__all__ = ["LOGVAR_MAX", "LOGVAR_MIN", "GRUForecaster", "GRUScratch", "GRUWeights", "gru_step", "scratch_for", "weights_of"]

LOGVAR_MIN, LOGVAR_MAX = -9.0, 6.0


class GRUForecaster(nn.Module):
    """One-step-ahead Gaussian forecaster over per-sensor feature sequences."""

    def __init__(self, input_size: int = N_FEATURES, hidden_size: int = 32, num_layers: int = 1) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 2)

    @property
    def state_size(self) -> int:
        """Floats of hidden state per sensor."""
        return self.hidden_size * self.num_layers

    def arch(self) -> dict[str, int]:
        """Constructor arguments, stored in model files."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers}

    def _heads(self, out: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.head(out)
        mean = z + y[..., 0]
        logvar = y[..., 1].clamp(LOGVAR_MIN, LOGVAR_MAX)
        return mean, logvar

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run padded sequences ``x [N, T, F]`` from states ``h0 [N, state_size]``.

        ``lengths`` (on CPU) marks where each sequence really ends; the returned state
        is then taken at each sequence's own last step. Returns ``(mean [N, T],
        logvar [N, T], h_n [N, state_size])``; outputs past a sequence's end are junk.
        """
        n = x.shape[0]
        h = None
        if h0 is not None:
            h = h0.reshape(n, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        if lengths is not None and int(lengths.min()) < x.shape[1]:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out_p, h_n = self.gru(packed, h)
            out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=x.shape[1])
        else:
            out, h_n = self.gru(x, h)
        mean, logvar = self._heads(out, x[..., 0])
        return mean, logvar, h_n.transpose(0, 1).reshape(n, self.state_size)


class GRUWeights(NamedTuple):
    """A forecaster's weights laid out for :func:`gru_step` (float32, input-major)."""

    w_in: np.ndarray  # [layers, max(input, hidden), 3 * hidden]: gates (r, z, n) from the input
    w_h: np.ndarray  # [layers, hidden, 3 * hidden]: gates from the previous state
    b_in: np.ndarray  # [layers, 3 * hidden]
    b_h: np.ndarray  # [layers, 3 * hidden]
    head_w: np.ndarray  # [hidden, 2]: mean correction and log-variance
    head_b: np.ndarray  # [2]
    input_size: int


def weights_of(model: GRUForecaster) -> GRUWeights:
    """Export a forecaster's weights for the compiled step."""
    h, n_layers = model.hidden_size, model.num_layers
    width = max(model.input_size, h)
    w_in = np.zeros((n_layers, width, 3 * h), dtype=np.float32)
    w_h = np.zeros((n_layers, h, 3 * h), dtype=np.float32)
    b_in = np.zeros((n_layers, 3 * h), dtype=np.float32)
    b_h = np.zeros((n_layers, 3 * h), dtype=np.float32)
    with torch.no_grad():
        for layer in range(n_layers):
            wi = getattr(model.gru, f"weight_ih_l{layer}").numpy()
            w_in[layer, :wi.shape[1]] = wi.T
            w_h[layer] = getattr(model.gru, f"weight_hh_l{layer}").numpy().T
            b_in[layer] = getattr(model.gru, f"bias_ih_l{layer}").numpy()
            b_h[layer] = getattr(model.gru, f"bias_hh_l{layer}").numpy()
        head_w = np.ascontiguousarray(model.head.weight.numpy().T, dtype=np.float32)
        head_b = model.head.bias.numpy().astype(np.float32)
    return GRUWeights(w_in, w_h, b_in, b_h, head_w, head_b, model.input_size)


class GRUScratch(NamedTuple):
    """Buffers one :func:`gru_step` works in (allocated once per batch)."""

    gi: np.ndarray  # float32 [3 * hidden]: gate inputs from the layer's input
    gh: np.ndarray  # float32 [3 * hidden]: gate inputs from the previous state
    pre: np.ndarray  # float32 [2 * hidden]: pre-activations
    act: np.ndarray  # float32 [2 * hidden]: activations
    bits: np.ndarray  # int32 [2 * hidden]: exponent bits of 2**k


def scratch_for(w: GRUWeights) -> GRUScratch:
    """Fresh buffers for steps of this network."""
    h3 = w.b_in.shape[1]
    h2 = 2 * (h3 // 3)
    return GRUScratch(np.zeros(h3, np.float32), np.zeros(h3, np.float32), np.zeros(h2, np.float32), np.zeros(h2, np.float32),
                      np.zeros(h2, np.int32))


_LN2_HI = np.float32(0.693145751953125)  # ln 2 split so that k * _LN2_HI is exact
_LN2_LO = np.float32(1.428606765330187e-06)
_INV_LN2 = np.float32(1.0 / math.log(2.0))
_F1 = np.float32(1.0)


@njit(cache=True, error_model="numpy")
def _sigmoids(pre: np.ndarray, out: np.ndarray, bits: np.ndarray, m: int) -> None:
    """``out[:m] = 1 / (1 + exp(-pre[:m]))`` in float32 (``out`` may be ``pre``).

    exp is a polynomial with the exponent set through its bits, so the compiler
    vectorises the loop (libm's exp, one call per element, was most of a step's time);
    it agrees with exp to about one float32 rounding.
    """
    scale = bits.view(np.float32)
    for i in range(m):
        x = min(max(-pre[i], np.float32(-87.0)), np.float32(87.0))
        k = np.floor(x * _INV_LN2 + np.float32(0.5))
        r = x - k * _LN2_HI - k * _LN2_LO
        # Taylor series of exp on |r| <= ln(2) / 2, to degree 7
        out[i] = _F1 + r * (_F1 + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (np.float32(1 / 24) + r * (
            np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for i in range(m):
        out[i] = _F1 / (_F1 + out[i] * scale[i])


@njit(cache=True, error_model="numpy")
def gru_step(h: np.ndarray, x: np.ndarray, w: GRUWeights, s: GRUScratch) -> tuple[float, float]:
    """Advance state ``h [layers * hidden]`` by input ``x [F]``, in place, as torch's GRU
    does; returns the head's ``(mean, log-variance)`` of the next normalised value."""
    n_layers, hidden3 = w.b_in.shape
    hidden = hidden3 // 3
    gi, gh, pre, act = s.gi, s.gh, s.pre, s.act
    for layer in range(n_layers):
        hl = h[layer * hidden:(layer + 1) * hidden]
        inp = x if layer == 0 else h[(layer - 1) * hidden:layer * hidden]
        width = w.input_size if layer == 0 else hidden
        gi[:] = w.b_in[layer]
        gh[:] = w.b_h[layer]
        for k in range(width):  # input-major, so the inner loop runs over contiguous gates
            xk = inp[k]
            row = w.w_in[layer, k]
            for j in range(hidden3):
                gi[j] += row[j] * xk
        for k in range(hidden):
            hk = hl[k]
            row = w.w_h[layer, k]
            for j in range(hidden3):
                gh[j] += row[j] * hk
        for j in range(2 * hidden):  # reset and update gates
            pre[j] = gi[j] + gh[j]
        _sigmoids(pre, act, s.bits, 2 * hidden)
        for j in range(hidden):  # new gate: tanh(a) = 2 sigmoid(2a) - 1
            pre[j] = np.float32(2.0) * (gi[2 * hidden + j] + act[j] * gh[2 * hidden + j])
        _sigmoids(pre, pre, s.bits, hidden)
        for j in range(hidden):
            z = act[hidden + j]
            n = np.float32(2.0) * pre[j] - _F1
            hl[j] = (_F1 - z) * n + z * hl[j]
    top = h[(n_layers - 1) * hidden:]
    m = w.head_b[0]
    lv = w.head_b[1]
    for k in range(hidden):
        m += w.head_w[k, 0] * top[k]
        lv += w.head_w[k, 1] * top[k]
    return float(x[0] + m), min(max(float(lv), LOGVAR_MIN), LOGVAR_MAX)
