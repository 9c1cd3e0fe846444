"""The GRU forecaster.

The network reads one feature vector per reading (see :mod:`.features`) and, from its
hidden state after reading ``t``, forecasts the normalised value of reading ``t+1`` as
a Gaussian: a mean (a correction added to the current normalised value, so that
persistence is the easy default) and a log-variance, trained with the Gaussian
negative log-likelihood. The variance lets the scorer judge a residual against the
forecast's own uncertainty.

How a model is stored (checksummed files, ``weights_only=True``) is the model
lifecycle's business: :mod:`streamrnn.lifecycle.artifacts`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .features import N_FEATURES

__all__ = ["GRUForecaster", "LOGVAR_MIN", "LOGVAR_MAX"]

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
