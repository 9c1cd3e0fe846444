"""Partition state in an SQLite database: one node.

``<state.dir>/state.sqlite`` in WAL mode with ``synchronous=FULL``: a save is one
transaction (the changed rows, the removed sensors and the partition's offset land
together or not at all) whose cost is the rows it writes, not the sensors held. Each
row carries a CRC-32 of its bytes; a row that fails it is left out (that sensor starts
fresh) and counted. State files of earlier versions (``partitions/*.npz``, a whole
partition each) are imported on first load.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ...lifecycle.artifacts import ArtifactError, read_checksummed
from ..transport.base import Partition
from .base import CheckpointError, PartitionState
from .checksum import crc32_rows

__all__ = ["LocalStateStore", "dtype_text"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,  -- the first reading the saved state has not seen
    row_dtype TEXT NOT NULL,       -- numpy descr of the rows, as JSON
    meta TEXT NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS sensors (
    topic TEXT NOT NULL, partition INTEGER NOT NULL,
    sensor BLOB NOT NULL,  -- UTF-8, lone surrogates kept (ids are whatever the messages held)
    crc INTEGER NOT NULL, row BLOB NOT NULL,
    PRIMARY KEY (topic, partition, sensor));
"""
# One default row to a page: a changed row costs one page in the write-ahead log (and one when
# the log is copied into the database), where larger pages would carry unchanged
# neighbours along and smaller ones split the row over overflow pages.
_PAGE_SIZE = 8192
# A save runs beside the scoring loop: one statement per chunk of rows, split inside SQLite
# (the ids and rows arrive as two blobs, each row's id span and CRC as JSON), holds the GIL
# once per chunk where one statement per row would hand it back and forth at every row.
# An upsert rewrites a saved row where it lies (REPLACE would delete it and append it under
# a new rowid, touching more pages of the table and its key index).
_UPSERT = """
INSERT INTO sensors (topic, partition, sensor, crc, row)
SELECT ?1, ?2, substr(?3, r.value ->> 0, r.value ->> 1), r.value ->> 2, substr(?4, r.key * ?5 + 1, ?5)
FROM json_each(?6) AS r WHERE true
ON CONFLICT (topic, partition, sensor) DO UPDATE SET crc = excluded.crc, row = excluded.row
"""
_CHUNK = 2048


def dtype_text(dtype: np.dtype) -> str:
    """How a row layout is recorded beside the rows."""
    return json.dumps(dtype.descr)


def _key(sensor_id: str) -> bytes:
    return sensor_id.encode("utf-8", "surrogatepass")


def _dtype_of(text: str) -> np.dtype:
    fields = [(f[0], f[1], tuple(f[2])) if len(f) > 2 else (f[0], f[1]) for f in json.loads(text)]
    return np.dtype(fields)


class LocalStateStore:
    """Sensor rows in an SQLite database in a directory; a save writes only what changed."""

    def __init__(self, state_dir: str | Path, *, row_dtype: np.dtype | None = None) -> None:
        """``row_dtype``: the rows this version writes (rows saved with it load as it;
        without it, as the dtype they were saved with)."""
        self.dir = Path(state_dir)
        self.path = self.dir / "state.sqlite"
        self.row_dtype = row_dtype
        self.corrupt_total = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            # Unreadable as a database: keep it for inspection, start from an empty one.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("state database %s unusable (%s): moved to %s, every sensor starts fresh", self.path, e, aside)
            self.corrupt_total += 1
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    p.rename(f"{aside}{suffix}")
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # takes effect on a new database only
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # a committed save survives power loss
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM partitions").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    # -- saving -------------------------------------------------------------------------
    def save(self, states: dict[Partition, PartitionState]) -> int:
        """Merge the changes of every partition in one transaction; returns the row bytes written."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                total = sum(self._merge(tp, st) for tp, st in states.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:  # e.g. the disk is full: nothing of this save landed
            raise OSError(f"state database write failed: {e}") from e
        return total

    def _merge(self, tp: Partition, st: PartitionState) -> int:
        db = self._db
        schema = dtype_text(st.rows.dtype)
        saved = db.execute("SELECT row_dtype FROM partitions WHERE topic = ? AND partition = ?", tp).fetchone()
        if saved is not None and saved[0] != schema:
            # Rows of another layout: the caller sends every row again in this one.
            db.execute("DELETE FROM sensors WHERE topic = ? AND partition = ?", tp)
        # Removals first: a sensor evicted and back since keeps its new row.
        db.executemany("DELETE FROM sensors WHERE topic = ? AND partition = ? AND sensor = ?",
                       ((tp[0], tp[1], _key(sid)) for sid in st.removed))
        for a in range(0, len(st.ids), _CHUNK):
            db.execute(_UPSERT, self._chunk(tp, st.ids[a:a + _CHUNK], st.rows[a:a + _CHUNK]))
        meta = json.dumps({**st.meta, "saved_at": time.time()})
        db.execute("INSERT OR REPLACE INTO partitions (topic, partition, next_offset, row_dtype, meta) VALUES (?, ?, ?, ?, ?)",
                   (tp[0], tp[1], int(st.offset), schema, meta))
        return st.rows.nbytes + len(meta)

    @staticmethod
    def _chunk(tp: Partition, ids: list[str], rows: np.ndarray) -> tuple[str, int, bytes, bytes, int, str]:
        """The parameters of :data:`_UPSERT` for these rows."""
        keys = [_key(sid) for sid in ids]
        lengths = np.array([len(k) for k in keys], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths + 1  # SQLite's substr counts from 1
        spans = json.dumps(np.stack([starts, lengths, crc32_rows(rows).astype(np.int64)], axis=1).tolist())
        return tp[0], tp[1], b"".join(keys), np.ascontiguousarray(rows).tobytes(), rows.dtype.itemsize, spans

    def forget(self, tp: Partition) -> None:
        """Drop everything saved for ``tp``."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM sensors WHERE topic = ? AND partition = ?", tp)
            self._db.execute("DELETE FROM partitions WHERE topic = ? AND partition = ?", tp)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OSError(f"state database write failed: {e}") from e

    # -- loading ------------------------------------------------------------------------
    def saved_meta(self, tp: Partition) -> tuple[dict[str, Any], str] | None:
        """The metadata saved with ``tp`` and its rows' layout (:func:`dtype_text`), if saved."""
        try:
            got = self._db.execute("SELECT meta, row_dtype FROM partitions WHERE topic = ? AND partition = ?", tp).fetchone()
            return None if got is None else (json.loads(got[0]), got[1])
        except (sqlite3.DatabaseError, ValueError):
            return None

    def load(self, partitions: list[Partition]) -> dict[Partition, PartitionState]:
        """The saved state of those partitions that have one (unusable rows are logged,
        counted and left out)."""
        out = {}
        try:
            for tp in partitions:
                st = self._load(tp)
                if st is None:
                    st = self._import_legacy(tp)
                if st is not None:
                    out[tp] = st
        except sqlite3.DatabaseError as e:
            self.corrupt_total += 1
            raise CheckpointError(f"state database {self.path} unreadable: {e}") from e
        return out

    def _load(self, tp: Partition) -> PartitionState | None:
        part = self._db.execute("SELECT next_offset, row_dtype, meta FROM partitions WHERE topic = ? AND partition = ?",
                                tp).fetchone()
        if part is None:
            return None
        offset, schema, meta_text = part
        try:
            meta: dict[str, Any] = json.loads(meta_text)
            dtype = self.row_dtype if self.row_dtype is not None and schema == dtype_text(self.row_dtype) \
                else _dtype_of(schema)
        except (ValueError, TypeError) as e:
            self.corrupt_total += 1
            log.error("state of %s/%d unusable (%s): its sensors start fresh", tp[0], tp[1], e)
            return None
        ids, blobs = [], []
        bad = 0
        # as blobs whatever they hold now: a damaged row fails its checksum, not the query
        query = "SELECT CAST(sensor AS BLOB), crc, CAST(row AS BLOB) FROM sensors WHERE topic = ? AND partition = ?"
        for sid, crc, row in self._db.execute(query, tp):
            if len(row) == dtype.itemsize and zlib.crc32(row) == crc:
                ids.append(sid.decode("utf-8", "surrogatepass"))
                blobs.append(row)
            else:
                bad += 1
        if bad:
            self.corrupt_total += bad
            log.error("%d saved sensor row(s) of %s/%d fail their checksum: those sensors start fresh", bad, tp[0], tp[1])
        rows = np.frombuffer(b"".join(blobs), dtype=dtype) if blobs else np.zeros(0, dtype=dtype)
        return PartitionState(ids, rows, int(offset), meta)

    def _legacy_path(self, tp: Partition) -> Path:
        # '~' cannot appear in a Kafka topic name, so it separated topic and partition.
        return self.dir / "partitions" / f"{tp[0]}~{tp[1]}.npz"

    def _import_legacy(self, tp: Partition) -> PartitionState | None:
        """A partition file of an earlier version, moved into the database (then renamed ``.imported``)."""
        path = self._legacy_path(tp)
        if not path.exists():
            return None
        try:
            data, _ = read_checksummed(path)
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                st = PartitionState([str(s) for s in z["ids"].tolist()], z["rows"], int(meta.pop("offset")), meta)
        except (OSError, ValueError, KeyError, IndexError, TypeError, ArtifactError) as e:
            self.corrupt_total += 1
            log.error("state of %s/%d unusable (%s): its sensors start fresh", tp[0], tp[1], e)
            return None
        try:
            self.save({tp: st})
            path.rename(path.with_suffix(".imported"))
        except OSError as e:  # it stays a file and is imported again next time
            log.warning("could not move %s into %s: %s", path, self.path, e)
        return st

    def close(self) -> None:
        """Close the database."""
        self._db.close()
