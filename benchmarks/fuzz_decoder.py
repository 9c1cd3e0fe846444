#!/usr/bin/env python3
"""Coverage-guided fuzzing of the message decoder (atheris, libFuzzer's engine).

    pip install -e '.[fuzz]'
    python benchmarks/fuzz_decoder.py -max_total_time=120 [CORPUS_DIR]   (an empty CORPUS_DIR gets seeds)

Each input is one Kafka message value, decoded alone and inside a batch of valid
messages. The decoder must never raise, must account for every message exactly once
(kept or rejected with a reason), and what it keeps must be a reading the core can
take: a short string id, a finite value and a timestamp within the documented range.
Any other libFuzzer flag (``-runs=N``, ``-jobs``) passes through; a failure leaves a
``crash-*`` file to replay with ``python benchmarks/fuzz_decoder.py crash-...``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["streamrnn"]):
    import orjson

    from streamrnn.ingest.messages import MessageDecoder, MessageParams

CONFIG = MessageParams()
DECODER = MessageDecoder(CONFIG)
NOW = 1.7e9
VALID = orjson.dumps({"sensor_id": "pump-7", "ts": NOW - 60, "value": 3.14})
SEEDS = [VALID, b'{"sensor_id": 7, "ts": "2024-11-26T00:00:00Z", "value": "1e3"}',
         b'{"sensor_id": "x", "ts": 1732579200000000000, "value": -0.0}', b'{"ts": null}', b"[]", b""]


def check(payloads: list[bytes | None]) -> None:
    """The decoder's promises for one batch."""
    out = DECODER.decode(payloads, now=NOW)
    rejected = [r.index for r in out.rejections]
    assert sorted(out.index + rejected) == list(range(len(payloads))), "a message was lost or counted twice"
    for sid, t, v in zip(out.sensor_ids, out.ts, out.values, strict=True):
        assert isinstance(sid, str) and 0 < len(sid) <= CONFIG.max_sensor_id_length, sid
        assert math.isfinite(v), v
        assert 0.0 <= t <= NOW + CONFIG.max_clock_skew_seconds, t
    for r in out.rejections:
        assert r.reason.value and isinstance(r.detail, str)


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: the input alone, then among valid messages."""
    check([data])
    check([VALID, data, None, VALID])


def main() -> None:
    for seed in SEEDS:
        test_one_input(seed)
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and Path(corpus[0]).is_dir() and not any(Path(corpus[0]).iterdir()):
        for i, seed in enumerate(SEEDS):  # start from the shapes real producers send
            (Path(corpus[0]) / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
