"""Message bytes into readings, and the reasons a message is rejected.

A reading is ``(sensor_id, ts, value)`` with ``ts`` in epoch seconds (UTC). Decoding
is the one step that must touch every message in Python, so :class:`MessageDecoder`
works on a whole poll batch and returns columns ready for the vectorised core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, cast

import numpy as np
import orjson
import pyarrow as pa
from pydantic import Field
from pydantic.dataclasses import dataclass as parameters

from ..core.parameters import PARAMS
from .timestamps import epoch_numbers, parse_timestamp, parse_timestamps

__all__ = ["DecodedBatch", "MessageDecoder", "MessageParams", "Reason", "Rejection"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class MessageParams:
    """How to read a reading out of each JSON message."""

    sensor_field: str = Field(default="sensor_id", min_length=1, description="JSON field holding the sensor id.")
    time_field: str = Field(default="ts", min_length=1, description="JSON field holding the timestamp: epoch s, ms, µs or ns (told apart by magnitude) or ISO-8601.")
    value_field: str = Field(default="value", min_length=1, description="JSON field holding the numeric value.")
    max_clock_skew_seconds: float = Field(default=3600.0, ge=0, description="A reading dated more than this ahead of the worker's clock is dead-lettered as future_timestamp, so one bad clock cannot silence its sensor (0 disables).")
    max_sensor_id_length: int = Field(default=256, ge=1, description="Longer sensor ids are dead-lettered as bad_sensor_id.")
    out_of_order: Literal["drop", "dead_letter"] = Field(default="drop", description="What to do with a reading at or before its sensor's last timestamp (replays after a crash are expected, so the default counts and drops them).")


class Reason(str, Enum):
    """Why a message was rejected; used as the ``reason`` label and dead-letter header."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    NON_NUMERIC_VALUE = "non_numeric_value"
    NON_FINITE_VALUE = "non_finite_value"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    BAD_SENSOR_ID = "bad_sensor_id"
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

    def decode(self, payloads: Iterable[bytes | None], *, now: float | None = None) -> DecodedBatch:
        """Decode a batch of message values; never raises for bad input.

        ``now`` (epoch seconds) enables the clock bound: readings dated more than
        ``max_clock_skew_seconds`` after it are rejected (offline files pass none).

        One pass in Python takes each message's fields apart; timestamps are then
        converted for the whole batch at once (numbers with numpy, texts with the
        column-wise ISO-8601 parser), by the same rules as :func:`parse_timestamp`.
        """
        payloads = list(payloads)
        out = DecodedBatch()
        rej = out.rejections.append
        try:
            # a None payload (tombstone) raises TypeError and takes the one-by-one path
            objs: list[Any] = list(map(orjson.loads, cast("list[bytes]", payloads)))
        except (orjson.JSONDecodeError, TypeError):
            objs = [self._loads(i, raw, rej) for i, raw in enumerate(payloads)]
        sf, tf, vf = self.sensor_field, self.time_field, self.value_field
        index, ids, values = out.index, out.sensor_ids, out.values
        raw_ts: list[Any] = []
        isfinite = math.isfinite
        max_id = self.params.max_sensor_id_length
        for i, obj in enumerate(objs):
            try:
                sid, t, v = obj[sf], obj[tf], obj[vf]
            except (KeyError, TypeError):  # not an object, or a field missing: say which
                self._reject_shape(i, obj, rej)
                continue
            if sid is None or sid == "" or t is None or v is None:
                self._reject_shape(i, obj, rej)
                continue
            tid = type(sid)
            if tid is str:
                if len(sid) > max_id:
                    rej(Rejection(i, Reason.BAD_SENSOR_ID, f"{sf} of {len(sid)} characters, at most {max_id}"))
                    continue
            elif tid is int or (tid is float and isfinite(sid)):
                sid = str(sid)
            else:  # objects, lists, booleans, NaN: not a name anyone gave a sensor
                rej(Rejection(i, Reason.BAD_SENSOR_ID, f"{sf}={sid!r:.80} is not a string or number"))
                continue
            if type(v) is float:
                value = v
            elif type(v) is int:
                value = float(v)
            else:
                try:
                    value = _parse_value(v)
                except (TypeError, ValueError):
                    rej(Rejection(i, Reason.NON_NUMERIC_VALUE, f"{vf}={v!r:.80}"))
                    continue
            if not isfinite(value):
                rej(Rejection(i, Reason.NON_FINITE_VALUE, f"{vf}={v!r:.80}"))
                continue
            index.append(i)
            ids.append(sid)
            values.append(value)
            raw_ts.append(t)
        skew = self.params.max_clock_skew_seconds
        self._timestamps(out, raw_ts, latest=now + skew if now is not None and skew > 0 else None)
        return out

    def _reject_shape(self, i: int, obj: Any, rej: Callable[[Rejection], None]) -> None:
        """Reject a message that is not an object, or lacks a field."""
        if obj is _FAILED:
            return  # not JSON: rejected already
        if type(obj) is not dict:
            rej(Rejection(i, Reason.NOT_OBJECT, f"JSON {type(obj).__name__}, expected an object"))
            return
        fields = ((self.sensor_field, obj.get(self.sensor_field)), (self.time_field, obj.get(self.time_field)),
                  (self.value_field, obj.get(self.value_field)))
        rej(Rejection(i, Reason.MISSING_FIELD, "missing " + ", ".join(f for f, x in fields if x is None or x == "")))

    @staticmethod
    def _loads(i: int, raw: bytes | None, rej: Callable[[Rejection], None]) -> Any:
        """One message's JSON, or _FAILED with its rejection recorded."""
        if raw is None:
            rej(Rejection(i, Reason.NOT_JSON, "empty message (null value)"))
            return _FAILED
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            rej(Rejection(i, Reason.NOT_JSON, str(e)[:200]))
            return _FAILED

    @staticmethod
    def _timestamps(out: DecodedBatch, raw_ts: list[Any], *, latest: float | None) -> None:
        """Epoch seconds of the readings' raw timestamps; readings whose timestamp is not
        one (the scalar parser's message says why) or is after ``latest`` are rejected."""
        n = len(raw_ts)
        ts = np.full(n, np.nan)
        texts: list[int] = []
        for k, t in enumerate(raw_ts):
            tt = type(t)
            if tt is float or tt is int:
                ts[k] = t
            elif tt is str:
                texts.append(k)
        numbers = np.isfinite(ts)
        ts[numbers] = epoch_numbers(ts[numbers])
        if texts:
            ts[texts] = parse_timestamps(pa.array([raw_ts[k] for k in texts], type=pa.string()))
        bad = ~np.isfinite(ts)
        bound = math.inf if latest is None else latest
        future = ts > bound
        if not (bad.any() or future.any()):
            out.ts = ts.tolist()
            return
        for k in np.flatnonzero(bad).tolist():
            try:
                parse_timestamp(raw_ts[k])
                detail = f"timestamp {raw_ts[k]!r:.80} out of range"
            except (TypeError, ValueError, OverflowError) as e:
                detail = str(e)[:200]
            out.rejections.append(Rejection(out.index[k], Reason.BAD_TIMESTAMP, detail))
        for k in np.flatnonzero(future).tolist():
            out.rejections.append(Rejection(out.index[k], Reason.FUTURE_TIMESTAMP,
                                            f"timestamp {raw_ts[k]!r:.80} is {ts[k] - bound:.0f} s past the clock bound"))
        out.rejections.sort(key=lambda r: r.index)
        good = ~bad & ~future
        keep = good.tolist()
        out.index = [i for i, k in zip(out.index, keep, strict=True) if k]
        out.sensor_ids = [s for s, k in zip(out.sensor_ids, keep, strict=True) if k]
        out.values = [v for v, k in zip(out.values, keep, strict=True) if k]
        out.ts = ts[good].tolist()


_FAILED = object()  # a message that is not JSON (already rejected)
