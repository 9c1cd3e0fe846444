#!/usr/bin/env python3
"""Checkpoint cost and restore time of both state backends.

    python benchmarks/state_store.py [--sensors 100000 1000000] [--partitions 8]
                                     [--backends local kafka] [--changed 1 10 100] [--json FILE]

For each sensor count and backend: fills a detector (a few readings per sensor; a
row's size does not depend on how full it is), saves every sensor once (the first
checkpoint), then for each percentage feeds one reading to that share of the sensors
and times the checkpoint that follows, the way the worker's coordinator builds it
(the bank's changed slots filed by partition, their rows packed, one ``save``).
Reports the duration, the bytes the store was handed and, for the local backend, the
bytes the process wrote to disk (``/proc/self/io``: the write-ahead log and its
copy into the database). Then restores every partition into a fresh detector with
a new store object: local from its database; kafka from its local cache (the
changelog read only after the cached offset) and, where ``--kafka-cold`` allows,
with no cache (the changelog read from its beginning).

The baseline in the same run is writing the same bytes to one file with a single
fsync (``raw``): what the disk costs with no store at all.

``--beside`` also times the worker loop during each checkpoint: the save runs on its
own thread, as :meth:`CheckpointCoordinator.tick` runs it, while the main thread scores
batches of ``BATCH`` readings on a second detector; it reports the slowest of those
batches against the median batch with no save running, measured just before.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamrnn.config import parse_config  # noqa: E402
from streamrnn.core import BankParams, Detector  # noqa: E402
from streamrnn.daemon.stores.base import PartitionState  # noqa: E402
from streamrnn.daemon.stores.changelog import ChangelogStateStore  # noqa: E402
from streamrnn.daemon.stores.local import LocalStateStore  # noqa: E402
from streamrnn.devtools.broker import EmbeddedBroker  # noqa: E402
from streamrnn.lifecycle.artifacts import default_model_path, load_model  # noqa: E402

BATCH = 20_000


def disk_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes")).split()[1])


def filled_detector(n: int, parts: int) -> tuple[Detector, list[str]]:
    mf = load_model(default_model_path())
    det = Detector(mf.model, version=mf.version, bank=BankParams(max_sensors=n, initial_capacity=n))
    det.bank.tracking = True
    ids = [f"plant-a/line-{i // 100:05d}/sensor-{i:07d}" for i in range(n)]
    rng = np.random.default_rng(0)
    for r in range(3):
        feed(det, ids, np.arange(n), 60.0 * r, parts, rng)
    return det, ids


def feed(det: Detector, ids: list[str], which: np.ndarray, ts: float, parts: int, rng: np.random.Generator) -> None:
    for a in range(0, len(which), BATCH):
        w = which[a:a + BATCH]
        det.process([ids[i] for i in w.tolist()], np.full(len(w), ts), rng.normal(size=len(w)), (w % parts).astype(np.int32))


def changed_states(det: Detector, parts: int, offset: int) -> dict:
    """What the coordinator hands the store: each partition's changed rows."""
    bank = det.bank
    slots = bank.take_changed()
    owner = bank.rows["owner"][slots]
    out = {}
    for p in range(parts):
        s = slots[owner == p]
        out[("bench", p)] = PartitionState([bank.sensor_at(x) or "" for x in s.tolist()], bank.pack(s), offset,
                                           {"model_version": det.model_version})
    return out


class Loop:
    """Scoring batches on a detector of its own, the load a checkpoint runs beside."""

    def __init__(self, model: object, version: str) -> None:
        self.det = Detector(model, version=version, bank=BankParams(max_sensors=BATCH, initial_capacity=BATCH))  # type: ignore[arg-type]
        self.ids = [f"loop-{i:06d}" for i in range(BATCH)]
        self.rng = np.random.default_rng(2)
        self.ts = 0.0

    def batch(self) -> float:
        """Seconds to score one batch (every sensor one reading, a minute on)."""
        self.ts += 60.0
        t = time.perf_counter()
        self.det.process(self.ids, np.full(BATCH, self.ts), self.rng.normal(size=BATCH))
        return time.perf_counter() - t

    def beside(self, work: threading.Thread) -> tuple[float, float, int]:
        """Median batch alone, slowest batch while ``work`` runs, and how many ran beside it."""
        alone = float(np.median([self.batch() for _ in range(10)]))
        work.start()
        times = []
        while work.is_alive():
            times.append(self.batch())
        work.join()
        return alone, max(times, default=0.0), len(times)


def raw_write(path: Path, states: dict) -> float:
    t = time.perf_counter()
    with open(path, "wb") as f:
        for st in states.values():
            f.write(st.rows.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def restore(model: object, version: str, n: int, store: object, parts: int) -> tuple[float, int]:
    """Seconds to load every partition into a fresh detector, and the sensors it then holds."""
    t = time.perf_counter()
    loaded = store.load([("bench", p) for p in range(parts)])  # type: ignore[attr-defined]
    fresh = Detector(model, version=version, bank=BankParams(max_sensors=n, initial_capacity=n))  # type: ignore[arg-type]
    for st in loaded.values():
        fresh.bank.unpack(st.ids, st.rows)
    took = time.perf_counter() - t
    held = len(fresh.bank)
    del loaded, fresh
    gc.collect()
    return took, held


def run(n: int, backend: str, args: argparse.Namespace, kcfg: object, tmp: str) -> dict:
    t = time.perf_counter()
    det, ids = filled_detector(n, args.partitions)
    print(f"\n{n:,} sensors, {backend} (filled in {time.perf_counter() - t:.0f} s, row {det.bank.row_dtype.itemsize} bytes)", flush=True)
    where = Path(tmp) / f"{backend}-{n}"
    topic = f"bench-changelog-{n}"
    row_dtype = det.bank.row_dtype

    def new_store(cache: bool = True) -> object:
        if backend == "local":
            return LocalStateStore(where, row_dtype=row_dtype)
        return ChangelogStateStore(kcfg, topic=topic, row_dtype=row_dtype,  # type: ignore[arg-type]
                                   partitions=args.partitions, cache_dir=where if cache else None)

    store = new_store()
    loop = Loop(det.model, det.model_version) if args.beside else None
    result: dict = {"sensors": n, "backend": backend, "row_bytes": det.bank.row_dtype.itemsize, "checkpoints": []}
    rng = np.random.default_rng(1)
    offset = 1000
    steps = [("first", 100.0)] + [(f"{pct:g}%", pct) for pct in args.changed]
    for label, pct in steps:
        if label != "first":
            which = np.sort(rng.choice(n, size=max(1, int(n * pct / 100)), replace=False))
            feed(det, ids, which, 60.0 * (offset - 997), args.partitions, rng)  # the next minute: nobody overdue
        offset += 1
        states = changed_states(det, args.partitions, offset)
        rows = sum(len(st.ids) for st in states.values())
        w0 = disk_written()
        got: dict = {}

        def save(states: dict = states, got: dict = got) -> None:
            t = time.perf_counter()
            got["handed"] = store.save(states)  # type: ignore[attr-defined]
            got["took"] = time.perf_counter() - t

        stall = None
        if loop is not None:
            stall = loop.beside(threading.Thread(target=save))
        else:
            save()
        handed, took = got["handed"], got["took"]
        disk = disk_written() - w0
        raw = raw_write(Path(tmp) / "raw.bin", states)
        (Path(tmp) / "raw.bin").unlink()
        cp = {"step": label, "rows": rows, "seconds": took, "bytes_handed": handed, "disk_bytes": disk if backend == "local" else None,
              "raw_fsync_seconds": raw}
        if stall is not None:
            cp.update(batch_alone_seconds=stall[0], batch_slowest_beside_seconds=stall[1], batches_beside=stall[2])
        result["checkpoints"].append(cp)
        disk_txt = f", disk {disk / max(rows, 1):7.0f} B/row" if backend == "local" else ""
        print(f"  checkpoint {label:>6}: {rows:>9,} rows {took:8.2f} s ({took / max(rows, 1) * 1e6:6.1f} us/row, "
              f"{handed / max(rows, 1):6.0f} B/row{disk_txt})   raw file+fsync {raw:6.2f} s  (x{took / max(raw, 1e-9):.1f})", flush=True)
        if stall is not None:
            print(f"      beside the loop: {stall[2]} batches of {BATCH:,} scored meanwhile, slowest {stall[1] * 1e3:.0f} ms "
                  f"(x{stall[1] / stall[0]:.1f} the {stall[0] * 1e3:.0f} ms of a batch alone)", flush=True)
        del states
    store.close()  # type: ignore[attr-defined]
    held = len(det.bank)
    model, version = det.model, det.model_version
    del det, loop  # the restore measured with the filled detector's rows gone, as in a new process
    gc.collect()
    for name, cache in [("restore", True)] + ([("restore, no cache", False)] if backend == "kafka" and n <= args.kafka_cold else []):
        s = new_store(cache)
        took, got = restore(model, version, held, s, args.partitions)
        extra = f", {s.records_read:,} changelog records read" if backend == "kafka" else ""  # type: ignore[attr-defined]
        s.close()  # type: ignore[attr-defined]
        assert got == held, (got, held)
        result[name] = took
        print(f"  {name:<17}: {took:7.2f} s ({took / held * 1e6:5.1f} us/sensor{extra})", flush=True)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, nargs="+", default=[100_000])
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--backends", nargs="+", default=["local", "kafka"], choices=["local", "kafka"])
    ap.add_argument("--changed", type=float, nargs="+", default=[1, 10, 100], help="percentages of sensors changed")
    ap.add_argument("--kafka-cold", type=int, default=100_000, help="largest sensor count restored from the changelog with no cache")
    ap.add_argument("--beside", action="store_true", help="score batches beside each save and report the slowest")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        kcfg = parse_config({"kafka": {"bootstrap_servers": [broker.bootstrap]}}).kafka
        for n in args.sensors:
            for backend in args.backends:
                results.append(run(n, backend, args, kcfg, tmp))
                gc.collect()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
