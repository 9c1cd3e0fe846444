"""Timestamps of readings: every accepted form into epoch seconds (UTC).

A reading's time may arrive as epoch seconds, epoch milliseconds or ISO-8601 text;
the daemon's decoder and the offline file readers apply the same rules, so a file
scored offline is read exactly as the same messages would be.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["LATEST", "UNIT_BOUNDS", "epoch_numbers", "epoch_or_nan", "parse_timestamp", "parse_timestamps"]

# Epoch numbers are told apart by magnitude (the producer's unit is not in the message):
# below 1e11 seconds, then milliseconds, microseconds and nanoseconds, each range
# spanning the years 1973 to 5138 once converted; 1e20 and above is no timestamp.
UNIT_BOUNDS = (1e11, 1e14, 1e17, 1e20)
_UNITS = (1.0, 1e3, 1e6, 1e9)
# Times before the epoch or from the year 10000 on are no reading's.
LATEST = 253402300800.0  # 10000-01-01T00:00:00Z


def _epoch_number(x: float) -> float:
    if not math.isfinite(x) or x < 0 or x >= UNIT_BOUNDS[-1]:
        raise ValueError(f"timestamp {x!r} out of range")
    for bound, unit in zip(UNIT_BOUNDS, _UNITS, strict=True):
        if x < bound:
            return x / unit
    raise AssertionError("unreachable")


def _in_range(t: float, raw: Any) -> float:
    if not 0.0 <= t < LATEST:
        raise ValueError(f"timestamp {raw!r} before 1970 or after 9999")
    return t


def parse_timestamp(raw: Any) -> float:
    """Epoch seconds (UTC) from epoch seconds, milliseconds, microseconds or
    nanoseconds (by magnitude, see :data:`UNIT_BOUNDS`) or ISO-8601.

    Numeric strings count as numbers. ISO-8601 without an offset is taken as UTC.
    Raises ``ValueError`` when the value is none of these, or is before 1970.
    """
    if isinstance(raw, bool):
        raise ValueError("boolean is not a timestamp")
    if isinstance(raw, (int, float)):
        return _epoch_number(float(raw))
    if isinstance(raw, str):
        s = raw.strip()
        try:
            return _epoch_number(float(s))
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"cannot parse timestamp {raw!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return _in_range(dt.timestamp(), raw)
    raise ValueError(f"timestamp of type {type(raw).__name__}")


def epoch_or_nan(raw: Any) -> float:
    """:func:`parse_timestamp`, or NaN for a value that is not a timestamp (file readers)."""
    try:
        return parse_timestamp(raw)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def parse_timestamps(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """:func:`epoch_or_nan` of a whole column of timestamp texts, vectorised.

    The same rules as the per-message parser: numbers (epoch seconds, milliseconds,
    microseconds or nanoseconds by magnitude), else ISO-8601 (no offset means UTC); NaN for anything else. Texts
    the vectorised ISO parser does not take are tried one by one with
    :func:`parse_timestamp`, so both agree on every input.
    """
    trimmed = pc.utf8_trim_whitespace(texts)
    # the usual file holds one form throughout: one pass of Arrow's parser
    try:
        return epoch_numbers(pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.full(len(trimmed), np.nan)
    numeric = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False).to_numpy(zero_copy_only=False)
    if numeric.any():
        out[numeric] = epoch_numbers(pc.cast(pc.filter(trimmed, numeric), pa.float64()).to_numpy(zero_copy_only=False))
    rest = np.flatnonzero(~numeric)
    if len(rest):
        us, ok = _iso_microseconds(pc.filter(trimmed, ~numeric) if numeric.any() else trimmed)
        out[rest[ok]] = us[ok] / 1e6  # whole microseconds over 1e6, as datetime.timestamp() divides them
        for i in rest[~ok].tolist():  # what the vectorised parsers left: the scalar rules decide
            out[i] = epoch_or_nan(trimmed[i].as_py())
    with np.errstate(invalid="ignore"):
        out[~((out >= 0.0) & (out < LATEST))] = np.nan
    return out


def epoch_numbers(x: np.ndarray) -> np.ndarray:
    """:func:`_epoch_number` of an array (NaN where it would raise)."""
    with np.errstate(invalid="ignore"):
        x = np.where(np.isfinite(x) & (x >= 0) & (x < UNIT_BOUNDS[-1]), x, np.nan)
        unit = np.select([x < b for b in UNIT_BOUNDS[:-1]], _UNITS[:-1], _UNITS[-1])
        return x / unit


def _iso_microseconds(words: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch of ISO-8601 texts, and which parsed.

    Arrow's parser takes a whole column in one pass when every text has the same form
    (all without an offset, which means UTC, or all with one); pandas' takes mixed
    forms; what neither takes is left to the caller.
    """
    for kind in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            us = pc.cast(words, kind).cast(pa.int64()).to_numpy(zero_copy_only=False)
            return us, np.ones(len(us), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    import pandas as pd  # only for a column of mixed forms

    parsed = pd.to_datetime(words.to_pandas(), format="ISO8601", utc=True, errors="coerce")
    ok = ~parsed.isna().to_numpy()
    us = parsed.to_numpy(dtype="datetime64[us]", na_value=np.datetime64("NaT")).astype(np.int64)
    return us, ok
