"""Message bytes into readings, and the reasons a message is rejected.

A reading is ``(sensor_id, ts, value)`` with ``ts`` in epoch seconds (UTC). Decoding
is the one step that must touch every message in Python, so :class:`MessageDecoder`
works on a whole poll batch and returns columns ready for the vectorised core.

A *wide* message (``value_fields`` set) carries several measurements of one device:
each listed field becomes a reading of sensor ``<device><field_separator><field>``,
all at the message's time. Its bad fields are counted and left out; only a message
with no good field is rejected. ``tag_fields`` are identifying fields (site, line)
carried with every reading of the message.
"""

from __future__ import annotations

import math
from collections import Counter
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
from ..core.tags import Tags
from .timestamps import epoch_numbers, parse_timestamp, parse_timestamps

__all__ = ["DecodedBatch", "MessageDecoder", "MessageParams", "Reason", "Rejection"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class MessageParams:
    """How to read a reading out of each JSON message."""

    sensor_field: str = Field(default="sensor_id", min_length=1, description="JSON field holding the sensor id.")
    time_field: str = Field(default="ts", min_length=1, description="JSON field holding the timestamp: epoch s, ms, µs or ns (told apart by magnitude) or ISO-8601.")
    value_field: str = Field(default="value", min_length=1, description="JSON field holding the numeric value.")
    value_fields: list[str] | None = Field(default=None, min_length=1, description="Wide messages: each of these fields present in a message is one reading of sensor <sensor_field value><field_separator><field> (value_field is then not used).")
    field_separator: str = Field(default="/", description="Joins the device id and the field name into a wide message's sensor ids.")
    tag_fields: list[str] = Field(default_factory=list, description="Fields whose values (strings or numbers) tag the message's sensors; the latest are kept per sensor and carried by its alerts.")
    max_clock_skew_seconds: float = Field(default=3600.0, ge=0, description="A reading dated more than this ahead of the worker's clock is dead-lettered as future_timestamp, so one bad clock cannot silence its sensor (0 disables).")
    max_sensor_id_length: int = Field(default=256, ge=1, description="Longer sensor ids are dead-lettered as bad_sensor_id; longer tag values are left out (counted as bad_tag).")
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
    BAD_TAG = "bad_tag"  # a tag value that is not a string or number, or too long: left out, never a rejection


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
    results back to the source record (a wide message has several readings). ``tags``
    holds each reading's tags when tag fields are configured, else None.
    ``bad_fields`` counts, by reason, the fields left out of wide messages and the tag
    values left out.
    """

    index: list[int] = field(default_factory=list)
    sensor_ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    tags: list[Tags] | None = None
    bad_fields: Counter[Reason] = field(default_factory=Counter)


def _parse_value(raw: Any) -> float:
    if isinstance(raw, bool):
        raise TypeError("boolean")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        return float(raw.strip())  # ValueError for non-numeric strings
    raise TypeError(type(raw).__name__)


def _name(raw: Any) -> str | None:
    """A sensor id's or tag's text: a string as it is, a number as its text (None otherwise)."""
    t = type(raw)
    if t is str:
        return cast(str, raw)
    if t is int or (t is float and math.isfinite(raw)):
        return str(raw)
    return None


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
        out = DecodedBatch(tags=[] if self.params.tag_fields else None)
        try:
            # a None payload (tombstone) raises TypeError and takes the one-by-one path
            objs: list[Any] = list(map(orjson.loads, cast("list[bytes]", payloads)))
        except (orjson.JSONDecodeError, TypeError):
            objs = [self._loads(i, raw, out.rejections.append) for i, raw in enumerate(payloads)]
        raw_ts, readings = self._wide(objs, out) if self.params.value_fields else (self._narrow(objs, out), None)
        skew = self.params.max_clock_skew_seconds
        self._timestamps(out, raw_ts, readings, latest=now + skew if now is not None and skew > 0 else None)
        return out

    def _narrow(self, objs: list[Any], out: DecodedBatch) -> list[Any]:
        """One reading per message; returns the readings' raw timestamps."""
        rej = out.rejections.append
        sf, tf, vf = self.sensor_field, self.time_field, self.value_field
        index, ids, values = out.index, out.sensor_ids, out.values
        tags = out.tags
        raw_ts: list[Any] = []
        isfinite = math.isfinite
        for i, obj in enumerate(objs):
            try:
                sid, t, v = obj[sf], obj[tf], obj[vf]
            except (KeyError, TypeError):  # not an object, or a field missing: say which
                self._reject_shape(i, obj, rej)
                continue
            if sid is None or sid == "" or t is None or v is None:
                self._reject_shape(i, obj, rej)
                continue
            sid = self._sensor_id(i, sid, rej)
            if sid is None:
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
            if tags is not None:
                tags.append(self._tags(obj, out.bad_fields))
        return raw_ts

    def _wide(self, objs: list[Any], out: DecodedBatch) -> tuple[list[Any], list[int]]:
        """One reading per good value field of each message; returns the raw timestamp of
        each message with readings, and how many readings it gave."""
        rej = out.rejections.append
        sf, tf, sep = self.sensor_field, self.time_field, self.params.field_separator
        fields = self.params.value_fields or []
        index, ids, values, bad = out.index, out.sensor_ids, out.values, out.bad_fields
        tags = out.tags
        raw_ts: list[Any] = []
        readings: list[int] = []
        for i, obj in enumerate(objs):
            try:
                sid, t = obj[sf], obj[tf]
            except (KeyError, TypeError):
                self._reject_shape(i, obj, rej)
                continue
            if sid is None or sid == "" or t is None:
                self._reject_shape(i, obj, rej)
                continue
            sid = self._sensor_id(i, sid, rej)
            if sid is None:
                continue
            good = 0
            first_bad: tuple[Reason, str] | None = None
            for f in fields:
                v = obj.get(f)
                if v is None:
                    reason, detail = Reason.MISSING_FIELD, f"missing {f}"
                else:
                    try:
                        value = float(v) if type(v) is float or type(v) is int else _parse_value(v)
                        if math.isfinite(value):
                            index.append(i)
                            ids.append(sid + sep + f)
                            values.append(value)
                            good += 1
                            continue
                        reason, detail = Reason.NON_FINITE_VALUE, f"{f}={v!r:.80}"
                    except (TypeError, ValueError):
                        reason, detail = Reason.NON_NUMERIC_VALUE, f"{f}={v!r:.80}"
                bad[reason] += 1
                if first_bad is None:
                    first_bad = reason, detail
            if not good:
                assert first_bad is not None  # value_fields is never empty
                rej(Rejection(i, first_bad[0], f"no good value field: {first_bad[1]}"))
                continue
            raw_ts.append(t)
            readings.append(good)
            if tags is not None:
                t_of = self._tags(obj, bad)
                tags.extend([t_of] * good)
        return raw_ts, readings

    def _sensor_id(self, i: int, raw: Any, rej: Callable[[Rejection], None]) -> str | None:
        """Message ``i``'s sensor id as text, or None with its rejection recorded."""
        sid = _name(raw)
        sf, max_id = self.sensor_field, self.params.max_sensor_id_length
        if sid is None:  # objects, lists, booleans, NaN: not a name anyone gave a sensor
            rej(Rejection(i, Reason.BAD_SENSOR_ID, f"{sf}={raw!r:.80} is not a string or number"))
        elif len(sid) > max_id:
            rej(Rejection(i, Reason.BAD_SENSOR_ID, f"{sf} of {len(sid)} characters, at most {max_id}"))
            return None
        return sid

    def _tags(self, obj: dict[str, Any], bad: Counter[Reason]) -> Tags:
        """A message's tags: its tag fields that hold a string or number (missing ones are left out)."""
        got = []
        max_len = self.params.max_sensor_id_length
        for f in self.params.tag_fields:
            v = obj.get(f)
            if v is None:
                continue
            text = _name(v)
            if text is None or len(text) > max_len:
                bad[Reason.BAD_TAG] += 1
                continue
            got.append((f, text))
        return tuple(got)

    def _reject_shape(self, i: int, obj: Any, rej: Callable[[Rejection], None]) -> None:
        """Reject a message that is not an object, or lacks a field."""
        if obj is _FAILED:
            return  # not JSON: rejected already
        if type(obj) is not dict:
            rej(Rejection(i, Reason.NOT_OBJECT, f"JSON {type(obj).__name__}, expected an object"))
            return
        fields = [(self.sensor_field, obj.get(self.sensor_field)), (self.time_field, obj.get(self.time_field))]
        if not self.params.value_fields:
            fields.append((self.value_field, obj.get(self.value_field)))
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
    def _timestamps(out: DecodedBatch, raw_ts: list[Any], readings: list[int] | None, *, latest: float | None) -> None:
        """Epoch seconds of the messages' raw timestamps, one per message with readings
        (``readings[k]`` of them, consecutive in ``out``; one each when None). A message
        whose timestamp is not one (the scalar parser's message says why) or is after
        ``latest`` is rejected, with all its readings."""
        n = len(raw_ts)
        if readings is None:
            first = out.index
        else:
            starts = np.cumsum([0] + readings[:-1]).tolist() if readings else []
            first = [out.index[k] for k in starts]
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
            out.ts = (ts if readings is None else np.repeat(ts, readings)).tolist()
            return
        for k in np.flatnonzero(bad).tolist():
            try:
                parse_timestamp(raw_ts[k])
                detail = f"timestamp {raw_ts[k]!r:.80} out of range"
            except (TypeError, ValueError, OverflowError) as e:
                detail = str(e)[:200]
            out.rejections.append(Rejection(first[k], Reason.BAD_TIMESTAMP, detail))
        for k in np.flatnonzero(future).tolist():
            out.rejections.append(Rejection(first[k], Reason.FUTURE_TIMESTAMP,
                                            f"timestamp {raw_ts[k]!r:.80} is {ts[k] - bound:.0f} s past the clock bound"))
        out.rejections.sort(key=lambda r: r.index)
        good = ~bad & ~future
        if readings is not None:
            ts, good = np.repeat(ts, readings), np.repeat(good, readings)
        keep = good.tolist()
        out.index = [i for i, k in zip(out.index, keep, strict=True) if k]
        out.sensor_ids = [s for s, k in zip(out.sensor_ids, keep, strict=True) if k]
        out.values = [v for v, k in zip(out.values, keep, strict=True) if k]
        if out.tags is not None:
            out.tags = [t for t, k in zip(out.tags, keep, strict=True) if k]
        out.ts = ts[good].tolist()


_FAILED = object()  # a message that is not JSON (already rejected)
