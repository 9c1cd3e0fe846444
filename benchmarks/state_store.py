#!/usr/bin/env python3
"""Checkpoint cost and restore time of both state backends.

    python benchmarks/state_store.py [--sensors 1000 100000] [--partitions 8]

For each sensor count: fills a detector (history ring full), then for the local
directory and the Kafka changelog (embedded broker) times a full save of all
partitions, the bytes per sensor, and a restore of every partition into a fresh
detector. A worker saves only the partitions with new readings (local) or only the
sensors touched since the last save (changelog), so a checkpoint after a batch costs
the same per sensor touched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrnn.devtools.broker import EmbeddedBroker  # noqa: E402
from streamrnn.daemon.stores.base import PartitionState  # noqa: E402
from streamrnn.daemon.stores.changelog import ChangelogStateStore  # noqa: E402
from streamrnn.daemon.stores.local import LocalStateStore  # noqa: E402
from streamrnn.config import parse_config  # noqa: E402
from streamrnn.core import BankParams, Detector, ScoringParams  # noqa: E402
from streamrnn.lifecycle.artifacts import default_model_path, load_model  # noqa: E402


def filled_detector(n: int, parts: int) -> Detector:
    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version, bank=BankParams(max_sensors=n, initial_capacity=n))
    ids = [f"sensor-{i:07d}" for i in range(n)]
    owner = np.arange(n, dtype=np.int32) % parts
    rng = np.random.default_rng(0)
    for r in range(det.history_length):
        for a in range(0, n, 20000):
            det.process(ids[a:a + 20000], np.full(min(20000, n - a), 60.0 * r), rng.normal(size=min(20000, n - a)), owner[a:a + 20000])
    return det


def states_of(det: Detector, parts: int) -> dict:
    ids, slots = det.bank.held()
    own = det.bank.arrays["owner"][slots]
    out = {}
    for p in range(parts):
        m = own == p
        out[("bench", p)] = PartitionState([i for i, k in zip(ids, m.tolist()) if k], det.bank.pack(slots[m]), 1000, {"model_version": "x"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        kcfg = parse_config({"kafka": {"bootstrap_servers": [broker.bootstrap]}}).kafka
        for n in args.sensors:
            t = time.perf_counter()
            det = filled_detector(n, args.partitions)
            states = states_of(det, args.partitions)
            print(f"\n{n} sensors (filled in {time.perf_counter() - t:.0f}s), row {det.bank.row_dtype.itemsize} bytes")
            stores = {"local": LocalStateStore(f"{tmp}/{n}"),
                      "kafka": ChangelogStateStore(kcfg, topic=f"bench-changelog-{n}", row_dtype=det.bank.row_dtype, partitions=args.partitions)}
            for name, store in stores.items():
                t = time.perf_counter()
                size = store.save(states)
                save_s = time.perf_counter() - t
                t = time.perf_counter()
                loaded = store.load(list(states))
                fresh = Detector(det.model, version=det.model_version, bank=BankParams(max_sensors=n, initial_capacity=n))
                for st in loaded.values():
                    fresh.bank.unpack(st.ids, st.rows)
                restore_s = time.perf_counter() - t
                assert len(fresh.bank) == n
                print(f"  {name:<6} save {save_s * 1000:9.1f} ms ({save_s / n * 1e6:6.1f} us and {size / n:6.0f} bytes per sensor)   "
                      f"restore {restore_s:6.2f} s")
                store.close()


if __name__ == "__main__":
    main()
