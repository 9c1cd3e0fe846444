"""The model registry: versioned, checksummed model files in the state directory.

Layout of ``<state.dir>/models``::

    v1.pt  v1.pt.sha256  v1.json     a version: weights, checksum, metadata
    v2.pt  ...
    CURRENT                          the version workers serve ("v2")

Every file is written atomically (temporary file, fsync, rename). Metadata holds the
version, its parent, creation time, the training window, validation losses and the
sha256. Loading verifies the checksum and uses ``weights_only=True``; a corrupt or
missing file is logged and the newest older good version is served instead. The last
``keep`` versions are kept (never the one serving).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.forecaster import GRUForecaster
from .artifacts import ModelFile, ModelFileError, atomic_write, load_model, save_model

__all__ = ["ModelRegistry", "ModelMeta", "RegistryError"]

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing loadable)."""


@dataclass
class ModelMeta:
    """What is known about one registry version."""

    version: str
    parent: str | None
    created: float
    sha256: str
    training_window: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None
    parent_val_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """Versioned model files under one directory."""

    def __init__(self, directory: str | Path, *, keep: int) -> None:
        self.dir = Path(directory)
        self.keep = max(1, int(keep))

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, *, keep: int) -> ModelRegistry:
        """The registry every worker of a deployment shares: ``<state.dir>/models``."""
        return cls(Path(state_dir) / "models", keep=keep)

    # -- reading ----------------------------------------------------------------------
    def _num(self, version: str) -> int:
        return int(version.lstrip("v"))

    def versions(self) -> list[ModelMeta]:
        """All versions with readable metadata, oldest first."""
        out = []
        for p in self.dir.glob("v*.json"):
            try:
                out.append(ModelMeta(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError) as e:
                log.warning("registry: unreadable metadata %s: %s", p, e)
        return sorted(out, key=lambda m: self._num(m.version))

    def meta(self, version: str) -> ModelMeta:
        """Metadata of one version."""
        p = self.dir / f"{version}.json"
        if not p.exists():
            raise RegistryError(f"no model version {version!r} in {self.dir}")
        return ModelMeta(**json.loads(p.read_text()))

    def current(self) -> str | None:
        """The version marked as serving, if any."""
        try:
            v = (self.dir / "CURRENT").read_text().strip()
        except OSError:
            return None
        return v or None

    def load(self, version: str) -> ModelFile:
        """Load one version (checksum verified, ``weights_only=True``)."""
        meta = self.meta(version)
        mf = load_model(self.dir / f"{version}.pt")
        if mf.sha256 != meta.sha256:
            raise ModelFileError(f"{version}: file sha256 {mf.sha256} differs from the registry's {meta.sha256}")
        mf.version = version
        return mf

    def load_serving(self) -> ModelFile | None:
        """The current version, or the newest older one that loads; None if none does."""
        cur = self.current()
        if cur is None:
            return None
        candidates = [m.version for m in reversed(self.versions()) if self._num(m.version) <= self._num(cur)]
        if cur not in candidates:
            candidates.insert(0, cur)
        for v in candidates:
            try:
                mf = self.load(v)
            except (ModelFileError, RegistryError, OSError, ValueError) as e:
                log.error("registry: model %s unusable, trying an older version: %s", v, e)
                continue
            if v != cur:
                log.warning("registry: serving %s instead of %s", v, cur)
            return mf
        log.error("registry: no usable model version in %s", self.dir)
        return None

    def first_served(self) -> float:
        """When this deployment first served a model from outside the registry (the
        packaged or a configured one): recorded once in ``SERVING_SINCE``, so a restart
        does not pass for a fresh model."""
        path = self.dir / "SERVING_SINCE"
        try:
            return float(path.read_text())
        except (OSError, ValueError):
            pass
        now = time.time()
        try:
            atomic_write(path, f"{now!r}\n".encode())
        except OSError as e:
            log.warning("registry: cannot record when serving began (%s): counting from now", e)
        return now

    # -- writing ----------------------------------------------------------------------
    def publish(self, model: GRUForecaster, parent: str | None, training_window: dict[str, Any] | None = None,
                val_loss: float | None = None, parent_val_loss: float | None = None, extra: dict[str, Any] | None = None,
                make_current: bool = True) -> ModelMeta:
        """Write a new version (and by default mark it serving); returns its metadata."""
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = [self._num(m.version) for m in self.versions()]
        version = f"v{max(existing, default=0) + 1}"
        digest = save_model(self.dir / f"{version}.pt", model, version, meta={"parent": parent})
        meta = ModelMeta(version=version, parent=parent, created=time.time(), sha256=digest,
                         training_window=dict(training_window or {}), val_loss=val_loss,
                         parent_val_loss=parent_val_loss, extra=dict(extra or {}))
        atomic_write(self.dir / f"{version}.json", json.dumps(asdict(meta), indent=1).encode())
        if make_current:
            self.set_current(version)
        self._prune()
        return meta

    def set_current(self, version: str) -> None:
        """Mark a version as serving (rollback uses this); it must load."""
        self.load(version)
        atomic_write(self.dir / "CURRENT", f"{version}\n".encode())

    def _prune(self) -> None:
        cur = self.current()
        metas = self.versions()
        for m in metas[:-self.keep]:
            if m.version == cur:
                continue
            for suffix in (".pt", ".pt.sha256", ".json"):
                (self.dir / f"{m.version}{suffix}").unlink(missing_ok=True)
