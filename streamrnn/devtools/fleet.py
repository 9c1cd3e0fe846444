"""A synthetic fleet of sensors with known injected anomalies.

Used by the demo feed, the end-to-end tests, the benchmarks and to train the model the
package ships (which therefore never sees benchmark data). Each sensor follows one of
a few shapes seen in plant and infrastructure telemetry (daily/weekly cycles with drift
and noise, slow random walks, on/off duty cycles, plain noise); anomalies are injected
at random with their kind and time recorded:

* ``spike``: one reading far off its course;
* ``level_shift``: the level jumps and stays there for a while;
* ``stuck``: the sensor repeats its last value for a while.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Anomaly", "SensorFleet", "KINDS"]

KINDS = ("daily", "random_walk", "duty_cycle", "noise")
_DAY = 86400.0


@dataclass(frozen=True)
class Anomaly:
    """An injected anomaly: which sensor, what kind, first and last affected timestamp."""

    sensor_id: str
    kind: str
    start_ts: float
    end_ts: float


class SensorFleet:
    """Generates one reading per sensor per tick, vectorised over sensors."""

    def __init__(self, n_sensors: int = 40, seed: int = 0, interval: float = 60.0, start_ts: float = 1_767_225_600.0,
                 anomaly_rate: float = 0.0, kinds: tuple[str, ...] = KINDS, prefix: str = "sensor",
                 anomaly_kinds: tuple[str, ...] = ("spike", "level_shift", "stuck"), min_gap: int = 200,
                 clean_ticks: int = 1440) -> None:
        """``anomaly_rate``: chance per sensor and tick that an anomaly starts (after
        ``clean_ticks`` clean ticks and at least ``min_gap`` ticks after the sensor's last one)."""
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.n = n_sensors
        self.interval = float(interval)
        self.ts = float(start_ts)
        self.tick = 0
        self.anomaly_rate = float(anomaly_rate)
        self.anomaly_kinds = anomaly_kinds
        self.min_gap = int(min_gap)
        self.clean_ticks = int(clean_ticks)
        self.ids = [f"{prefix}-{i:05d}" for i in range(n_sensors)]
        n = n_sensors
        self.kind = rng.choice(np.array(kinds), size=n)
        self.base = rng.uniform(-50, 150, n)
        self.scale = np.exp(rng.uniform(np.log(0.5), np.log(50), n))
        self.daily_amp = self.scale * rng.uniform(1.0, 4.0, n)
        self.weekly_amp = self.daily_amp * rng.uniform(0.0, 0.3, n)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.noise_sd = self.scale * rng.uniform(0.05, 0.3, n)
        self.ar = rng.uniform(0.0, 0.8, n)
        self.drift_sd = self.noise_sd * rng.uniform(0.0, 0.05, n)
        self.duty_period = rng.integers(20, 200, n)
        self.duty_frac = rng.uniform(0.2, 0.8, n)
        self._noise = np.zeros(n)
        self._drift = np.zeros(n)
        self._walk = np.zeros(n)
        # active anomaly per sensor: 0 none, else remaining ticks; its offset and kind
        self._remaining = np.zeros(n, dtype=np.int64)
        self._offset = np.zeros(n)
        self._akind = np.array([""] * n, dtype=object)
        self._stuck_value = np.zeros(n)
        self._last_end = np.full(n, -10**9, dtype=np.int64)
        self._open: dict[int, Anomaly] = {}
        self.anomalies: list[Anomaly] = []
        self._last_values = np.zeros(n)

    def _clean(self) -> np.ndarray:
        t = self.ts
        rng = self.rng
        self._noise = self.ar * self._noise + rng.normal(0, 1, self.n) * self.noise_sd * np.sqrt(1 - self.ar ** 2)
        self._drift += rng.normal(0, 1, self.n) * self.drift_sd
        self._walk += rng.normal(0, 1, self.n) * self.noise_sd * 0.5
        day = 2 * np.pi * (t % _DAY) / _DAY + self.phase
        week = 2 * np.pi * (t % (7 * _DAY)) / (7 * _DAY)
        daily = self.base + self.daily_amp * np.sin(day) + self.weekly_amp * np.sin(week) + self._drift + self._noise
        walk = self.base + self._walk + self._noise
        on = (self.tick % self.duty_period) < self.duty_frac * self.duty_period
        duty = self.base + np.where(on, self.daily_amp, 0.0) + self._noise
        noise = self.base + self.noise_sd * 3 * rng.normal(0, 1, self.n)
        return np.select([self.kind == "daily", self.kind == "random_walk", self.kind == "duty_cycle"], [daily, walk, duty], noise)

    def _inject(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if self.anomaly_rate > 0 and self.tick >= self.clean_ticks:
            free = (self._remaining == 0) & (self.tick - self._last_end >= self.min_gap)
            start = free & (rng.random(self.n) < self.anomaly_rate)
            for i in np.flatnonzero(start).tolist():
                kind = str(rng.choice(self.anomaly_kinds))
                sign = rng.choice([-1.0, 1.0])
                sd = self.noise_sd[i] + 0.05 * self.daily_amp[i]
                if kind == "spike":
                    self._remaining[i], self._offset[i] = 1, sign * rng.uniform(10, 16) * sd
                elif kind == "level_shift":
                    self._remaining[i], self._offset[i] = int(rng.integers(30, 90)), sign * rng.uniform(10, 16) * sd
                else:
                    self._remaining[i], self._stuck_value[i] = int(rng.integers(60, 120)), self._last_values[i]
                self._akind[i] = kind
                self._open[i] = Anomaly(self.ids[i], kind, self.ts, self.ts)
        active = self._remaining > 0
        if active.any():
            stuck = active & (self._akind == "stuck")
            shifted = active & ~stuck
            values = np.where(shifted, values + self._offset, values)
            values = np.where(stuck, self._stuck_value, values)
            self._remaining[active] -= 1
            for i in np.flatnonzero(active & (self._remaining == 0)).tolist():
                a = self._open.pop(i)
                self.anomalies.append(Anomaly(a.sensor_id, a.kind, a.start_ts, self.ts))
                self._last_end[i] = self.tick
                self._akind[i] = ""
        return values, active

    def step(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """One tick: ``(sensor_ids, ts, values, is_anomalous)`` for every sensor."""
        values = self._clean()
        if self.tick == 0:
            self._last_values = values.copy()
        values, labels = self._inject(values)
        values = np.round(values, 4)
        self._last_values = values
        ts = np.full(self.n, self.ts)
        self.tick += 1
        self.ts += self.interval
        return list(self.ids), ts, values, labels

    def started_at(self, ts: float) -> list[Anomaly]:
        """Anomalies that began at this timestamp, whether still running or (one-tick
        spikes) already over."""
        ended = []
        for a in reversed(self.anomalies):  # in order of their ending: the newest are last
            if a.end_ts < ts:
                break
            if a.start_ts == ts:
                ended.append(a)
        return ended[::-1] + [a for a in self._open.values() if a.start_ts == ts]

    def all_anomalies(self) -> list[Anomaly]:
        """Finished anomalies plus those still running (ending at the last tick so far)."""
        last = self.ts - self.interval
        return self.anomalies + [Anomaly(a.sensor_id, a.kind, a.start_ts, last) for a in self._open.values()]

    def frame(self, n_ticks: int) -> pd.DataFrame:
        """``n_ticks`` ticks as a long frame ``sensor_id, ts, value, is_anomalous`` in time order."""
        parts = []
        for _ in range(n_ticks):
            ids, ts, v, lab = self.step()
            parts.append(pd.DataFrame({"sensor_id": ids, "ts": ts, "value": v, "is_anomalous": lab}))
        return pd.concat(parts, ignore_index=True)
