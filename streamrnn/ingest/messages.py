"""Message bytes into readings, and the reasons a message is rejected.

A reading is ``(sensor_id, ts, value)`` with ``ts`` in epoch seconds (UTC). Decoding
is the one step that must touch every message in Python, so :class:`MessageDecoder`
works on a whole poll batch and returns columns ready for the vectorised core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import orjson
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters

from ..core.parameters import PARAMS
from .timestamps import parse_timestamp

__all__ = ["DecodedBatch", "MessageDecoder", "MessageParams", "Reason", "Rejection"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class MessageParams:
    """How to read a reading out of each JSON message."""

    sensor_field: str = Field(default="sensor_id", min_length=1, description="JSON field holding the sensor id.")
    time_field: str = Field(default="ts", min_length=1, description="JSON field holding the timestamp: epoch s, epoch ms or ISO-8601.")
    value_field: str = Field(default="value", min_length=1, description="JSON field holding the numeric value.")
    out_of_order: Literal["drop", "dead_letter"] = Field(default="drop", description="What to do with a reading at or before its sensor's last timestamp (replays after a crash are expected, so the default counts and drops them).")


class Reason(str, Enum):
    """Why a message was rejected; used as the ``reason`` label and dead-letter header."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    NON_NUMERIC_VALUE = "non_numeric_value"
    NON_FINITE_VALUE = "non_finite_value"
    BAD_TIMESTAMP = "bad_timestamp"
    OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True)
class Rejection:
    """One rejected message: its position in the batch, the reason and a human detail."""

    index: int
    reason: Reason
    detail: str


@dataclass
class DecodedBatch:
    """Columns of the good readings of a batch, plus the rejections.

    ``index[i]`` is the position in the input batch of reading ``i`` so callers can map
    results back to the source record.
    """

    index: list[int] = field(default_factory=list)
    sensor_ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _parse_value(raw: Any) -> float:
    if isinstance(raw, bool):
        raise TypeError("boolean")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        return float(raw.strip())  # ValueError for non-numeric strings
    raise TypeError(type(raw).__name__)


class MessageDecoder:
    """Decodes JSON message values into reading columns, rejecting what is malformed."""

    def __init__(self, params: MessageParams | None = None) -> None:
        self.params = params = params or MessageParams()
        self.sensor_field = params.sensor_field
        self.time_field = params.time_field
        self.value_field = params.value_field

    def decode(self, payloads: Iterable[bytes | None]) -> DecodedBatch:
        """Decode a batch of message values; never raises for bad input."""
        out = DecodedBatch()
        sf, tf, vf = self.sensor_field, self.time_field, self.value_field
        rej = out.rejections.append
        for i, raw in enumerate(payloads):
            try:
                obj = orjson.loads(raw) if raw is not None else None
            except orjson.JSONDecodeError as e:
                rej(Rejection(i, Reason.NOT_JSON, str(e)[:200]))
                continue
            if raw is None:
                rej(Rejection(i, Reason.NOT_JSON, "empty message (null value)"))
                continue
            if not isinstance(obj, dict):
                rej(Rejection(i, Reason.NOT_OBJECT, f"JSON {type(obj).__name__}, expected an object"))
                continue
            sid, t, v = obj.get(sf), obj.get(tf), obj.get(vf)
            if sid is None or sid == "" or t is None or v is None:
                missing = [f for f, x in ((sf, sid), (tf, t), (vf, v)) if x is None or x == ""]
                rej(Rejection(i, Reason.MISSING_FIELD, "missing " + ", ".join(missing)))
                continue
            try:
                value = _parse_value(v)
            except (TypeError, ValueError):
                rej(Rejection(i, Reason.NON_NUMERIC_VALUE, f"{vf}={v!r:.80}"))
                continue
            if not math.isfinite(value):
                rej(Rejection(i, Reason.NON_FINITE_VALUE, f"{vf}={v!r:.80}"))
                continue
            try:
                ts = parse_timestamp(t)
            except (TypeError, ValueError, OverflowError) as e:
                rej(Rejection(i, Reason.BAD_TIMESTAMP, str(e)[:200]))
                continue
            out.index.append(i)
            out.sensor_ids.append(sid if isinstance(sid, str) else str(sid))
            out.ts.append(ts)
            out.values.append(value)
        return out
