"""The GRU forecaster and its file format.

The network reads one feature vector per reading (see :mod:`.features`) and, from its
hidden state after reading ``t``, forecasts the normalised value of reading ``t+1`` as
a Gaussian: a mean (a correction added to the current normalised value, so that
persistence is the easy default) and a log-variance, trained with the Gaussian
negative log-likelihood. The variance lets the scorer judge a residual against the
forecast's own uncertainty.

Model files are a plain dict of tensors and numbers saved with ``torch.save`` next to
a ``.sha256`` file; they are written atomically and loaded with ``weights_only=True``
after the checksum is verified.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .features import N_FEATURES

__all__ = ["GRUForecaster", "ModelFile", "ModelFileError", "save_model", "load_model", "default_model_path", "atomic_write_bytes"]

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


class ModelFileError(RuntimeError):
    """A model file that is missing, corrupt or does not match its checksum."""


@dataclass
class ModelFile:
    """A loaded model file: the network and its metadata."""

    model: GRUForecaster
    version: str
    meta: dict[str, Any]
    sha256: str


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_model(path: str | os.PathLike[str], model: GRUForecaster, version: str, meta: dict[str, Any] | None = None) -> str:
    """Save a model atomically with its ``.sha256`` sidecar; returns the checksum."""
    payload = {
        "format": 1,
        "version": str(version),
        "arch": model.arch(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_bytes(f"{path}.sha256", f"{digest}  {Path(path).name}\n".encode())
    return digest


def load_model(path: str | os.PathLike[str]) -> ModelFile:
    """Load a model file after verifying its sha256 sidecar; ``weights_only=True``."""
    path = Path(path)
    try:
        data = path.read_bytes()
        expected = Path(f"{path}.sha256").read_text().split()[0]
    except (OSError, IndexError) as e:
        raise ModelFileError(f"{path}: cannot read model or checksum: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ModelFileError(f"{path}: sha256 {digest} does not match {expected}")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = GRUForecaster(**payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except Exception as e:  # any unpickling or shape error means the file is unusable
        raise ModelFileError(f"{path}: not a valid model file: {e}") from None
    model.eval()
    return ModelFile(model=model, version=str(payload["version"]), meta=dict(payload.get("meta", {})), sha256=digest)


def default_model_path() -> Path:
    """The model shipped in the package (trained on project-generated synthetic data)."""
    return Path(str(resources.files("streamrnn").joinpath("models", "default.pt")))
