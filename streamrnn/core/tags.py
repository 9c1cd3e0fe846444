"""Sensor tags: the identifying fields (site, line, ...) a sensor's messages carry.

A sensor's state row holds only a 64-bit key of its latest tags; :class:`TagTable`
maps keys to the tags. A key is a hash of the tags' canonical text, so it means the
same in every process: a row saved by one worker and restored by another still names
its tags, provided the table saved beside it (see :meth:`TagTable.subset`) is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["NO_TAGS", "TagTable", "Tags"]

Tags = tuple[tuple[str, str], ...]
"""A sensor's tags as ``((name, value), ...)`` in the order the configuration lists them."""

NO_TAGS = 0
"""The key of a sensor without tags."""


def tag_key(tags: Tags) -> int:
    """The stable key of ``tags`` (never :data:`NO_TAGS` for non-empty tags)."""
    text = "\x1f".join(f"{k}\x1e{v}" for k, v in tags).encode("utf-8", "surrogatepass")
    key = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)
    return key if key != NO_TAGS else 1


class TagTable:
    """Keys to tags, for every tag set seen (tag sets are few: sensors share them)."""

    def __init__(self) -> None:
        self._key_of: dict[Tags, int] = {(): NO_TAGS}
        self._tags_of: dict[int, dict[str, str]] = {NO_TAGS: {}}

    def __len__(self) -> int:
        """Tag sets known, the empty one included."""
        return len(self._tags_of)

    def keys(self, tags: Sequence[Tags]) -> np.ndarray:
        """The key of each reading's tags (learning new tag sets)."""
        key_of = self._key_of
        out = np.empty(len(tags), dtype=np.int64)
        for i, t in enumerate(tags):
            k = key_of.get(t)
            if k is None:
                k = key_of[t] = tag_key(t)
                self._tags_of[k] = dict(t)
            out[i] = k
        return out

    def tags(self, key: int) -> dict[str, str]:
        """The tags of a key ({} for one this table has never seen)."""
        return self._tags_of.get(key, {})

    def subset(self, keys: Iterable[int]) -> dict[str, dict[str, str]]:
        """The tags of these keys, JSON-ready (keys as text), to save beside the rows that hold them."""
        return {str(k): self._tags_of[k] for k in keys if k != NO_TAGS and k in self._tags_of}

    def learn(self, saved: Mapping[str, Mapping[str, str]]) -> None:
        """Take in a table saved by :meth:`subset` (restoring rows that hold its keys)."""
        for k, t in saved.items():
            if not isinstance(t, Mapping):
                continue  # saved by a version that wrote something else: those rows show no tags
            tags = tuple((str(a), str(b)) for a, b in t.items())
            try:
                key = int(k)
            except ValueError:
                continue
            self._tags_of.setdefault(key, dict(tags))
            self._key_of.setdefault(tags, key)
