"""Message decoding: field names, timestamp formats, and every rejection reason."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from streamrnn.ingest.messages import MessageDecoder, MessageParams, Reason
from streamrnn.ingest.timestamps import parse_timestamp

T = 1732579200.5


@pytest.mark.parametrize("raw, expected", [
    (T, T), (int(T), float(int(T))), (T * 1000, T), ("1732579200.5", T), ("1732579200500", T),
    (T * 1e6, T), (int(T * 1e9), T), ("1732579200500000", T), ("1732579200500000000", T),
    ("2024-11-26T00:00:00.5Z", T), ("2024-11-26T01:00:00.5+01:00", T), ("2024-11-26 00:00:00.5", T),
])
def test_timestamp_formats(raw: object, expected: float) -> None:
    assert parse_timestamp(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["yesterday", "", None, True, [1], -5, float("nan"), 1e20, 1e300, "1e400",
                                 "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_bad_timestamps_raise(raw: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_timestamp(raw)


def test_custom_field_names_and_numeric_strings() -> None:
    d = MessageDecoder(MessageParams(sensor_field="id", time_field="time", value_field="v")).decode([orjson.dumps({"id": 7, "time": "2024-11-26T00:00:00Z", "v": "3.5"})])
    assert d.rejections == []
    assert d.sensor_ids == ["7"] and d.values == [3.5]
    assert d.ts == [datetime(2024, 11, 26, tzinfo=timezone.utc).timestamp()]


@pytest.mark.parametrize("payload, reason", [
    (b"\xff\xfenot json", Reason.NOT_JSON),
    (b'{"sensor_id": "a", "ts": 1, "value": 1', Reason.NOT_JSON),
    (None, Reason.NOT_JSON),
    (b"[1, 2, 3]", Reason.NOT_OBJECT),
    (b'{"ts": 1, "value": 1}', Reason.MISSING_FIELD),
    (b'{"sensor_id": "a", "value": 1}', Reason.MISSING_FIELD),
    (b'{"sensor_id": "a", "ts": 1}', Reason.MISSING_FIELD),
    (b'{"sensor_id": "a", "ts": 1, "value": "high"}', Reason.NON_NUMERIC_VALUE),
    (b'{"sensor_id": "a", "ts": 1, "value": [1]}', Reason.NON_NUMERIC_VALUE),
    (b'{"sensor_id": "a", "ts": 1, "value": true}', Reason.NON_NUMERIC_VALUE),
    (b'{"sensor_id": "a", "ts": 1, "value": "NaN"}', Reason.NON_FINITE_VALUE),
    (b'{"sensor_id": "a", "ts": 1, "value": "-inf"}', Reason.NON_FINITE_VALUE),
    (b'{"sensor_id": "a", "ts": "noon", "value": 1}', Reason.BAD_TIMESTAMP),
    (b'{"sensor_id": "a", "ts": {"s": 1}, "value": 1}', Reason.BAD_TIMESTAMP),
    (b'{"sensor_id": "a", "ts": 1e25, "value": 1}', Reason.BAD_TIMESTAMP),
    (b'{"sensor_id": "a", "ts": "1960-01-01T00:00:00Z", "value": 1}', Reason.BAD_TIMESTAMP),
    (b'{"sensor_id": true, "ts": 1, "value": 1}', Reason.BAD_SENSOR_ID),
    (b'{"sensor_id": {"plant": 3}, "ts": 1, "value": 1}', Reason.BAD_SENSOR_ID),
    (b'{"sensor_id": ["a"], "ts": 1, "value": 1}', Reason.BAD_SENSOR_ID),
    (orjson.dumps({"sensor_id": "x" * 100_000, "ts": 1, "value": 1}), Reason.BAD_SENSOR_ID),
])
def test_rejections_carry_a_reason(payload: bytes | None, reason: str) -> None:
    d = MessageDecoder().decode([b'{"sensor_id": "ok", "ts": 1, "value": 2}', payload])
    assert d.index == [0]
    assert len(d.rejections) == 1
    assert d.rejections[0].index == 1
    assert d.rejections[0].reason == reason
    assert d.rejections[0].detail


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.none(),
                          st.builds(lambda s, t, v: json.dumps({"sensor_id": s, "ts": t, "value": v}).encode(),
                                    st.one_of(st.text(max_size=5), st.integers(), st.none()),
                                    st.one_of(st.floats(allow_nan=True), st.text(max_size=8), st.integers(), st.none()),
                                    st.one_of(st.floats(allow_nan=False), st.text(max_size=8), st.booleans(), st.none()))),
                max_size=20))
def test_decode_never_raises_and_accounts_for_every_message(payloads: list) -> None:
    d = MessageDecoder().decode(payloads)
    assert sorted(d.index + [r.index for r in d.rejections]) == list(range(len(payloads)))


def test_numeric_sensor_ids_are_named_by_their_text() -> None:
    d = MessageDecoder().decode([b'{"sensor_id": 12, "ts": 1, "value": 1}', b'{"sensor_id": 1.5, "ts": 2, "value": 1}',
                                 orjson.dumps({"sensor_id": "y" * 256, "ts": 3, "value": 1})])
    assert d.rejections == []
    assert d.sensor_ids == ["12", "1.5", "y" * 256]


def test_readings_from_the_future_are_rejected_against_the_clock() -> None:
    now = 1.8e9
    msgs = [orjson.dumps({"sensor_id": "a", "ts": t, "value": 1}) for t in (now, now + 3599, now + 3601, (now + 86400) * 1e9)]
    d = MessageDecoder().decode(msgs, now=now)
    assert d.index == [0, 1]
    assert [(r.index, r.reason) for r in d.rejections] == [(2, Reason.FUTURE_TIMESTAMP), (3, Reason.FUTURE_TIMESTAMP)]
    assert "past the clock bound" in d.rejections[0].detail
    # offline (no clock) and with the bound switched off, they are readings like any other
    assert MessageDecoder().decode(msgs).index == [0, 1, 2, 3]
    assert MessageDecoder(MessageParams(max_clock_skew_seconds=0)).decode(msgs, now=now).index == [0, 1, 2, 3]


def test_iso_and_numeric_timestamps_agree_on_the_range_limits() -> None:
    ok = MessageDecoder().decode([orjson.dumps({"sensor_id": "a", "ts": t, "value": 1})
                                  for t in ("9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", 0, 99999999999)])
    assert ok.rejections == []
    assert ok.ts[0] == pytest.approx(253402300799.0) and ok.ts[1] == 0.0 and ok.ts[3] == 99999999999.0


_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_ids = st.one_of(st.text(max_size=5), _int64, st.floats(), st.booleans(), st.none(),
                 st.lists(_int64, max_size=2), st.dictionaries(st.text(max_size=2), _int64, max_size=2))
_times = st.one_of(st.floats(), _int64, st.text(max_size=25),
                   st.datetimes().map(lambda d: d.isoformat()), st.booleans(), st.none())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(lambda s, t, v: orjson.dumps({"sensor_id": s, "ts": t, "value": v}), _ids, _times,
                          st.one_of(st.floats(), _int64, st.text(max_size=8))),
                max_size=20),
       st.one_of(st.none(), st.floats(0, 4e9)))
def test_every_accepted_reading_is_well_formed(payloads: list, now: float | None) -> None:
    d = MessageDecoder().decode(payloads, now=now)
    assert sorted(d.index + [r.index for r in d.rejections]) == list(range(len(payloads)))
    assert len(d.index) == len(d.sensor_ids) == len(d.values) == len(d.ts)
    for sid, t, v in zip(d.sensor_ids, d.ts, d.values, strict=True):
        assert isinstance(sid, str) and 0 < len(sid) <= 256
        assert 0.0 <= t < 253402300800.0 and (now is None or t <= now + 3600)
        assert math.isfinite(v)
    for r in d.rejections:
        assert isinstance(r.reason, Reason) and r.detail
