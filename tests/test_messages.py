"""Message decoding: field names, timestamp formats, and every rejection reason."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from streamrnn.ingest.messages import MessageDecoder, MessageParams, Reason
from streamrnn.ingest.timestamps import parse_timestamp

T = 1732579200.5


@pytest.mark.parametrize("raw, expected", [
    (T, T), (int(T), float(int(T))), (T * 1000, T), ("1732579200.5", T), ("1732579200500", T),
    ("2024-11-26T00:00:00.5Z", T), ("2024-11-26T01:00:00.5+01:00", T), ("2024-11-26 00:00:00.5", T),
])
def test_timestamp_formats(raw: object, expected: float) -> None:
    assert parse_timestamp(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["yesterday", "", None, True, [1], -5, float("nan")])
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
