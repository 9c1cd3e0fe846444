"""Readings files: CSV in, parsed columns out, and scored columns back to CSV.

A readings file holds ``timestamp,value`` and optionally ``sensor_id`` (any other
columns are kept as text). A *wide* file, the CSV form of wide messages, holds
``timestamp``, a device column, one column per value field and optional tag columns;
each non-empty value cell is one reading of sensor ``<device><separator><field>``, in
row order and then field order (see :func:`read_wide_csv`). Every column is read as text, so what is written back is
what was read; timestamps and values are then parsed column-wise by the same rules
the message decoder applies one message at a time. Reading and writing go through
Arrow's CSV engine: a million rows take a fraction of a second either way.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from numba import njit

from ..core import compiled  # noqa: F401  (places the compiled-code cache before njit below)
from ..core.tags import Tags
from .timestamps import parse_timestamps

__all__ = ["ReadingsFile", "parse_values", "read_readings_csv", "read_wide_csv", "round_significant", "write_csv"]


@dataclass
class ReadingsFile:
    """A readings file: its columns as read (one row per reading), and the parsed
    readings (NaN where unparsable); ``tags`` per reading when the file has tag columns."""

    columns: pa.Table
    sensor_ids: list[str] | None
    ts: np.ndarray
    values: np.ndarray
    tags: list[Tags] | None = None

    def __len__(self) -> int:
        return len(self.ts)


def _as_float(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def parse_values(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Numbers of a column of texts (NaN where a text is not a number), vectorised."""
    trimmed = pc.utf8_trim_whitespace(texts)
    try:
        return pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([_as_float(t) for t in trimmed.to_pylist()], dtype=np.float64)


def _read_text_csv(path: str | Path) -> pa.Table:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        return pcsv.read_csv(str(path), convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=False))
    except (OSError, UnicodeDecodeError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a readable CSV: {e}") from None


def read_wide_csv(path: str | Path, *, sensor_field: str, value_fields: list[str], separator: str,
                  tag_fields: list[str]) -> ReadingsFile:
    """Read a wide file: ``timestamp``, ``sensor_field``, the ``value_fields`` and any of
    the ``tag_fields`` present; one reading per non-empty value cell. The columns
    returned are ``sensor_id`` (``<device><separator><field>``), ``timestamp``, ``value``
    and the tag columns, one row per reading."""
    table = _read_text_csv(path)
    missing = {"timestamp", sensor_field} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    fields = [f for f in value_fields if f in table.column_names]
    if not fields:
        raise ValueError(f"{path}: none of the value fields {', '.join(value_fields)} is a column")
    tags = [f for f in tag_fields if f in table.column_names]
    rows, cols, ids, texts = [], [], [], []
    device = table[sensor_field]
    for k, f in enumerate(fields):
        text = pc.utf8_trim_whitespace(table[f])
        present = np.flatnonzero(pc.not_equal(text, "").to_numpy(zero_copy_only=False))
        rows.append(present)
        cols.append(np.full(len(present), k))
        ids.append(pc.take(pc.binary_join_element_wise(device, pa.scalar(separator + f), ""), pa.array(present)))
        texts.append(pc.take(table[f], pa.array(present)))
    row, col = np.concatenate(rows), np.concatenate(cols)
    order = pa.array(np.lexsort((col, row)))  # row order, then field order: time order as written
    row = row[order.to_numpy()]
    out = {"sensor_id": pc.take(pa.chunked_array([c for a in ids for c in a.chunks]), order),
           "timestamp": pc.take(table["timestamp"], pa.array(row)),
           "value": pc.take(pa.chunked_array([c for a in texts for c in a.chunks]), order)}
    for f in tags:
        out[f] = pc.take(table[f], pa.array(row))
    melted = pa.table(out)
    tag_values = None
    if tags:
        tag_rows = zip(*(melted[f].to_pylist() for f in tags), strict=True)
        tag_values = [tuple((f, v) for f, v in zip(tags, r, strict=True) if v != "") for r in tag_rows]
    return ReadingsFile(melted, melted["sensor_id"].to_pylist(), parse_timestamps(melted["timestamp"]),
                        parse_values(melted["value"]), tag_values)


def read_readings_csv(path: str | Path) -> ReadingsFile:
    """Read ``timestamp,value[,sensor_id]`` as text and parse the readings."""
    table = _read_text_csv(path)
    missing = {"timestamp", "value"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    ids = table["sensor_id"].to_pylist() if "sensor_id" in table.column_names else None
    return ReadingsFile(table, ids, parse_timestamps(table["timestamp"]), parse_values(table["value"]))


@njit(cache=True)
def _round_significant(x: np.ndarray, digits: int, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        v = x[i]
        if v == 0.0 or not math.isfinite(v):
            out[i] = v
            continue
        e = int(math.floor(math.log10(abs(v)))) - (digits - 1)
        # scale by an exact power of ten, so the rounding and the way back are exact
        if e < 0:
            p = 10.0 ** min(-e, 22)
            out[i] = round(v * p) / p
        else:
            p = 10.0 ** min(e, 22)
            out[i] = round(v / p) * p


def round_significant(x: np.ndarray, digits: int = 9) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits, as exactly as a double allows, so a
    shortest-repr writer prints at most that many (a float64 written in full has 17)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    _round_significant(x, digits, out)
    return out


def write_csv(columns: dict[str, pa.Array | pa.ChunkedArray | np.ndarray], path: str | Path) -> None:
    """Write columns (texts, numbers, flags) as a CSV with a header; NaN is written empty,
    and texts are quoted only when one holds a delimiter, quote or line end."""
    table = pa.table({k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v, from_pandas=True)
                      for k, v in columns.items()})
    try:
        pcsv.write_csv(table, str(path), write_options=pcsv.WriteOptions(quoting_style="none", quoting_header="none",
                                                                          batch_size=1 << 16))
    except pa.ArrowInvalid:  # a text that needs quotes ("none" refuses it): quote every text
        pcsv.write_csv(table, str(path), write_options=pcsv.WriteOptions(quoting_style="needed", quoting_header="none",
                                                                          batch_size=1 << 16))
