"""Where the core's compiled code is cached, so a stale copy is never run.

The scoring pass is compiled by numba on first use and cached on disk. Numba checks a
cached function against its own source file only, not against the functions it calls
from other files: after an edit to one step (or an upgrade that leaves a file's time
stamp alone) it would load machine code built from the old step. The cache therefore
lives in a directory named after a hash of every source file of the core, so any
change to them starts a fresh cache. ``NUMBA_CACHE_DIR``, when set, is the parent of
that directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numba

__all__ = ["cache_dir"]

_HERE = Path(__file__).resolve().parent


def _sources_digest() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    for p in sorted(_HERE.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _prune(parent: Path, keep: Path, newest: int = 3) -> None:
    """Remove caches of older cores beyond the ``newest`` few (each is a few MB)."""
    others = sorted((p for p in parent.glob("core-*") if p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[newest:]:
        shutil.rmtree(old, ignore_errors=True)


def cache_dir() -> Path:
    """The cache directory for this exact core (created if missing; a temporary one
    when no writable place exists)."""
    # set by the first import in a process tree: children keep the parent's base
    base = os.environ.get("STREAMRNN_NUMBA_CACHE_BASE", os.environ.get("NUMBA_CACHE_DIR", "")) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "streamrnn", "numba")
    path = Path(base) / f"core-{_sources_digest()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".writable"
        probe.touch()
        _prune(path.parent, keep=path)
    except OSError:
        path = Path(tempfile.gettempdir()) / f"streamrnn-numba-{os.getuid()}" / path.name
        path.mkdir(parents=True, exist_ok=True)
    return path


# Numba reads this when each cached function is defined, i.e. when the core's modules
# are imported: the package imports this module first. The environment is where numba
# looks (it re-reads its settings from there); the base is remembered so that a child
# process (retraining) does not nest a second hash under the first.
os.environ.setdefault("STREAMRNN_NUMBA_CACHE_BASE", os.environ.get("NUMBA_CACHE_DIR", ""))
os.environ["NUMBA_CACHE_DIR"] = str(cache_dir())
numba.config.reload_config()
