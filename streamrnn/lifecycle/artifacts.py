"""Files that must never be read half-written or silently corrupt: models and metadata.

Every durable file is written atomically (temporary file, fsync, rename, fsync of the
directory), so a reader sees the old content or the new one, never a torn mix. Files
whose bytes matter (model weights) also get a ``.sha256`` sidecar, written after the
data, and are verified against it on every read: a crash between the two, a bad disk
or a hand edit is detected instead of served.

A model file is a plain dict of tensors and numbers saved with ``torch.save`` and
loaded with ``weights_only=True`` after its checksum is verified.
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

from ..core.forecaster import GRUForecaster

__all__ = [
    "ArtifactError", "ModelFile", "ModelFileError", "atomic_write", "default_model_path", "load_model",
    "read_checksummed", "save_model", "write_checksummed",
]


class ArtifactError(RuntimeError):
    """A file that is missing, unreadable or does not match its checksum."""


class ModelFileError(ArtifactError):
    """A model file that is missing, corrupt or does not match its checksum."""


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checksummed(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` atomically with its ``.sha256`` sidecar; returns the digest.

    The sidecar first names both the new and the old digest, then the data is
    replaced, then the sidecar names the new one only: whichever step fails (a full
    disk, a crash), the file on disk matches its sidecar, and a failed write leaves
    the previous content readable.
    """
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    side = _sidecar(path)
    try:
        old = side.read_text().split("\n")[0] if path.exists() else ""
    except OSError:
        old = ""
    if old:
        atomic_write(side, f"{digest}  {path.name}\n{old}\n".encode())
    atomic_write(path, data)
    atomic_write(side, f"{digest}  {path.name}\n".encode())
    return digest


def read_checksummed(path: str | os.PathLike[str], error: type[ArtifactError] = ArtifactError) -> tuple[bytes, str]:
    """The bytes of a file written by :func:`write_checksummed` and their digest, after
    verifying them; raises ``error`` when either file is unreadable or they disagree."""
    path = Path(path)
    try:
        data = path.read_bytes()
        expected = [line.split()[0] for line in _sidecar(path).read_text().splitlines() if line.strip()]
    except (OSError, IndexError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read file or checksum: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest not in expected:
        raise error(f"{path}: sha256 {digest} does not match {' or '.join(expected) or 'an empty checksum file'}")
    return data, digest


@dataclass
class ModelFile:
    """A loaded model file: the network and its metadata."""

    model: GRUForecaster
    version: str
    meta: dict[str, Any]
    sha256: str


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
    return write_checksummed(path, buf.getvalue())


def load_model(path: str | os.PathLike[str]) -> ModelFile:
    """Load a model file after verifying its sha256 sidecar; ``weights_only=True``."""
    data, digest = read_checksummed(path, ModelFileError)
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
    return Path(str(resources.files("streamrnn").joinpath("models").joinpath("default.pt")))
