"""Timestamps of readings: every accepted form into epoch seconds (UTC).

A reading's time may arrive as epoch seconds, epoch milliseconds or ISO-8601 text;
the daemon's decoder and the offline file readers apply the same rules, so a file
scored offline is read exactly as the same messages would be.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

__all__ = ["epoch_or_nan", "parse_timestamp"]

# Epoch values above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
_MS_CUTOFF = 1e11


def _epoch_number(x: float) -> float:
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"timestamp {x!r} out of range")
    return x / 1000.0 if x >= _MS_CUTOFF else x


def parse_timestamp(raw: Any) -> float:
    """Epoch seconds (UTC) from epoch seconds, epoch milliseconds or ISO-8601.

    Numeric strings count as numbers. ISO-8601 without an offset is taken as UTC.
    Raises ``ValueError`` when the value is none of these.
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
        return dt.timestamp()
    raise ValueError(f"timestamp of type {type(raw).__name__}")


def epoch_or_nan(raw: Any) -> float:
    """:func:`parse_timestamp`, or NaN for a value that is not a timestamp (file readers)."""
    try:
        return parse_timestamp(raw)
    except (TypeError, ValueError, OverflowError):
        return float("nan")
