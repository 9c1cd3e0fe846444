"""Evidence beside the forecast residual, each as a per-sensor tail probability.

A one-step forecaster judges a reading against the last few: it misses a value that
is ordinary for the moment but extraordinary for the sensor, and it never misses a
sensor that is merely predictable. Each class here looks at the reading from one more
angle and returns ``p``, the probability of evidence at least this strong for a
normal reading of this sensor (1: nothing unusual):

* :class:`RangeNovelty`: the value lies beyond everything the sensor has shown;
* :class:`DailyProfile`: the value is far from the sensor's usual value at this time
  of day;
* :class:`SustainedResidual`: the forecast has been off for several readings in a row;
* :class:`PatternNovelty`: the shape of the recent readings is unlike any the sensor
  has shown lately;
* :class:`StuckCheck`: the sensor repeats one value far longer than it ever did.
"""

from __future__ import annotations

import numpy as np
import torch

from .calibration import TailEstimator
from .halflife import halflife_weight
from .state import Column

__all__ = ["DailyProfile", "PatternNovelty", "RangeNovelty", "StuckCheck", "SustainedResidual"]

_DAY = 86400.0


class RangeNovelty:
    """Scores a value outside the range the sensor has shown so far.

    Of ``n`` exchangeable readings the newest is the largest or the smallest with
    probability ``2 / n``, so a new extreme is that rare before looking at how far
    it goes; beyond the old extreme it is discounted by ``exp(-excess / scale)``
    (an exponential tail in units of the sensor's normalising scale). As in Numenta's
    NAB detector, only values beyond ``tolerance`` times the range's width count, so a
    slowly trending sensor does not call every small new record an anomaly. The range
    relaxes towards the running mean with half-life ``halflife`` readings (0: never),
    so one glitch does not blind the check for good; ``n`` is capped at that memory.
    """

    def __init__(self, *, tolerance: float, halflife: float) -> None:
        self.tolerance = float(tolerance)
        self.alpha = halflife_weight(halflife)
        self.memory = 1.0 / self.alpha if self.alpha > 0 else np.inf

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [Column("range_lo", "float64", np.inf), Column("range_hi", "float64", -np.inf)]

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, values: np.ndarray, scale: np.ndarray,
             mean: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``p`` per reading (``n``: the sensor's readings before this one), then widen
        each range by its reading and relax it towards ``mean``."""
        lo, hi = cols["range_lo"][slots], cols["range_hi"][slots]
        width = hi - lo
        with np.errstate(invalid="ignore"):
            excess = np.maximum(values - hi, lo - values)
            new = (n >= 2) & (width > 0) & (excess > self.tolerance * width)
        p0 = 2.0 / np.minimum(np.maximum(n, 2), self.memory)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(new, p0 * np.exp(-np.where(new, excess, 0.0) / np.where(np.isfinite(scale) & (scale > 0), scale, np.inf)), 1.0)
        lo, hi = np.minimum(lo, values), np.maximum(hi, values)
        if self.alpha:
            m = np.where(np.isfinite(mean), mean, values)
            lo, hi = lo + self.alpha * (np.minimum(m, hi) - lo), hi + self.alpha * (np.maximum(m, lo) - hi)
        cols["range_lo"][slots], cols["range_hi"][slots] = lo, hi
        return p


class DailyProfile:
    """Scores the distance of a value from the sensor's usual value at this time of day.

    Each sensor keeps the mean of its values in ``bins`` slots of the UTC day, each an
    exponentially weighted mean with a half-life of ``halflife_days`` (converted to
    visits of the slot from the sensor's typical reading interval). The distance of a
    reading from its slot's mean, in units of the sensor's normalising scale, goes
    through a :class:`TailEstimator`, so a sensor without a daily rhythm is judged by
    how far its values usually stray and one with a strong rhythm catches a value that
    is normal for the day but not for the hour (a holiday, a shifted shift).
    """

    # A slot's mean is trusted after this many visits.
    MIN_VISITS = 3

    def __init__(self, *, bins: int, halflife_days: float, tail: TailEstimator) -> None:
        self.bins = int(bins)
        self.halflife_days = float(halflife_days)
        self.tail = tail

    def columns(self) -> list[Column]:
        """State columns this component owns."""
        # float32 slot means: the profile is a coarse reference, and it is most of the
        # memory this evidence costs per sensor
        return [Column("profile_mean", "float32", 0.0, (self.bins,)), Column("profile_visits", "int32", 0, (self.bins,))] + self.tail.columns()

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, ts: np.ndarray, values: np.ndarray, scale: np.ndarray,
             interval: np.ndarray, learn: np.ndarray) -> np.ndarray:
        """``p`` per reading, then update the slot of each reading.

        ``interval`` is each sensor's typical seconds between readings; ``learn`` says
        which readings may update the distance's tail estimate.
        """
        b = np.clip((np.mod(ts, _DAY) * (self.bins / _DAY)).astype(np.int64), 0, self.bins - 1)
        mean = cols["profile_mean"][slots, b].astype(np.float64)
        k = cols["profile_visits"][slots, b].astype(np.int64)
        ready = (k >= self.MIN_VISITS) & np.isfinite(scale) & (scale > 0)
        dev = np.where(ready, np.abs(values - mean) / np.where(ready, scale, 1.0), np.nan)
        p = self.tail.step(cols, slots, dev, learn & ready)

        visits_per_day = _DAY / (self.bins * np.maximum(interval, 1e-3))
        halflife_visits = np.maximum(self.halflife_days * visits_per_day, 1.0)
        a = np.maximum(1.0 / (k + 1), halflife_weight(halflife_visits))
        cols["profile_mean"][slots, b] = mean + a * (values - mean)
        cols["profile_visits"][slots, b] = np.minimum(k + 1, np.iinfo(np.int32).max)
        return p


class SustainedResidual:
    """Scores a forecast that has been off for several readings in a row.

    One large residual is judged on its own by the residual tail; once a sensor has
    shown a few spikes, that tail is heavy and a later shift of the same size looks
    ordinary. A shift, though, keeps the residuals up while the forecast catches up,
    which spikes do not. This evidence is the mean of the last ``window`` residuals over
    the forecast's predicted deviation, each capped at ``clip`` (one spike moves the
    mean by at most ``clip / window``), judged by its own :class:`TailEstimator`: the
    windowed mean of raw anomaly scores that Numenta's anomaly likelihood uses, with
    HTM's window of 10.
    """

    def __init__(self, *, window: int, clip: float, tail: TailEstimator) -> None:
        self.window = int(window)
        self.clip = float(clip)
        self.tail = tail

    def columns(self) -> list[Column]:
        """State columns this component owns."""
        return [Column("sustain_ring", "float32", 0.0, (self.window,))] + self.tail.columns()

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, u: np.ndarray, n: np.ndarray, learn: np.ndarray) -> np.ndarray:
        """``p`` per reading. ``u`` is the absolute residual over the forecast's predicted
        deviation (NaN without a forecast), ``n`` the sensor's readings so far, this one
        included, and ``learn`` says which readings may update the tail estimate."""
        ring = cols["sustain_ring"][slots]
        ring[np.arange(len(slots)), n % self.window] = np.where(np.isfinite(u), np.minimum(u, self.clip), 0.0)
        cols["sustain_ring"][slots] = ring
        # a window is complete once it holds only readings that had a forecast
        full = n > self.window
        stat = np.where(full, ring.mean(axis=1, dtype=np.float64), np.nan)
        return self.tail.step(cols, slots, stat, learn & full)


class PatternNovelty:
    """Scores a shape of the recent readings unlike any the sensor has shown lately.

    A change of pattern with values in the usual range (a new periodic dip, a busy
    day that looks like a quiet one) leaves each reading ordinary for the forecast,
    the range and the time of day. This evidence looks at the last :attr:`SPAN`
    readings as a whole: normalised by the sensor's running mean and scale and
    reduced to :attr:`LENGTH` block means, the window is compared with the
    ``windows`` past windows the sensor keeps (one every :attr:`EVERY` readings, in a
    ring), leaving out those that overlap it. The distance to the nearest one (root
    mean square per block) goes through a :class:`TailEstimator`: a shape far from
    everything seen lately is rare. It is the nearest-neighbour distance that
    discord search (matrix profile) and ART-style novelty detectors use, with a memory
    bounded per sensor.
    """

    LENGTH = 8  # block means per window
    BLOCK = 12  # readings per block
    SPAN = LENGTH * BLOCK  # readings per window
    EVERY = 4  # readings between kept windows
    OVERLAP = SPAN // EVERY  # the newest kept windows, which overlap the current one
    _CLIP = 10.0  # a normalised value counts at most this far from the mean

    def __init__(self, *, windows: int, tail: TailEstimator) -> None:
        self.windows = int(windows)
        self.tail = tail
        if self.windows <= self.OVERLAP:
            raise ValueError(f"windows must be more than {self.OVERLAP}: the newest {self.OVERLAP} kept windows overlap the current one")

    def columns(self) -> list[Column]:
        """State columns this component owns."""
        # float16 windows: a coarse shape is all the comparison needs, and the kept
        # windows are most of the memory this evidence costs per sensor
        return [Column("pattern_recent", "float32", 0.0, (self.SPAN,)),
                Column("pattern_kept", "float16", 0.0, (self.windows, self.LENGTH))] + self.tail.columns()

    def _kept(self, n: np.ndarray) -> np.ndarray:
        """Windows kept after ``n`` readings (one at reading SPAN, then every EVERY)."""
        return np.maximum(n // self.EVERY - (self.SPAN - 1) // self.EVERY, 0)

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, values: np.ndarray, scale: np.ndarray, mean: np.ndarray,
             n: np.ndarray, learn: np.ndarray) -> np.ndarray:
        """``p`` per reading, then keep the window if it is due. ``scale`` and ``mean``
        normalise the value, ``n`` counts the sensor's readings, this one included,
        and ``learn`` says which readings may update the distance's tail estimate."""
        rows = np.arange(len(slots))
        ok = np.isfinite(scale) & (scale > 0) & np.isfinite(mean)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(ok, np.clip((values - mean) / np.where(ok, scale, 1.0), -self._CLIP, self._CLIP), 0.0)
        recent = cols["pattern_recent"][slots]
        recent[rows, n % self.SPAN] = z
        cols["pattern_recent"][slots] = recent
        # oldest first: the ring position after the newest reading holds the oldest
        order = (n[:, None] + 1 + np.arange(self.SPAN)[None, :]) % self.SPAN
        window = np.take_along_axis(recent, order, axis=1).reshape(len(slots), self.LENGTH, self.BLOCK).mean(axis=2)

        # torch: numpy converts float16 element by element, and this is the scorer's
        # heaviest step (sensors x windows x blocks)
        before = self._kept(n - 1)
        newest = torch.from_numpy(((before - 1) % self.windows).astype(np.int32))
        age = newest[:, None] - torch.arange(self.windows, dtype=torch.int32)[None, :]
        age = torch.where(age < 0, age + self.windows, age)  # kept windows since each ring entry
        # ages run below self.windows, so "kept before" needs no cap at the ring's size
        usable = (age >= self.OVERLAP) & (age < torch.from_numpy(before.astype(np.int64))[:, None])
        diff = torch.from_numpy(cols["pattern_kept"][slots]).float().sub_(torch.from_numpy(window.astype(np.float32))[:, None, :])
        d2 = diff.mul_(diff).sum(dim=2).masked_fill_(~usable, float("inf")).amin(dim=1).double().numpy()
        ready = np.isfinite(d2)  # an earlier window that does not overlap this one exists
        dist = np.where(ready, np.sqrt(d2 / self.LENGTH), np.nan)
        p = self.tail.step(cols, slots, dist, learn & ready)

        due = (n >= self.SPAN) & (n % self.EVERY == 0)
        if due.any():
            at = (self._kept(n[due]) - 1) % self.windows
            cols["pattern_kept"][slots[due], at] = window[due].astype(np.float16)
        return p


class StuckCheck:
    """Scores a sensor that repeats exactly the same value far longer than it ever did.

    A stuck transmitter produces tiny residuals, so a forecast alone never catches it.
    A run counts as stuck at ``readings`` repeats and more than twice the longest run
    the sensor has shown; ``p`` is how unlikely such a run is at the sensor's usual
    repeat rate.
    """

    def __init__(self, *, readings: int, halflife: float) -> None:
        self.readings = int(readings)
        self.alpha_min = halflife_weight(halflife)

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [
            Column("last_value", "float64", np.nan),
            Column("stuck_run", "int64", 0),
            Column("repeat_rate", "float64", 0.0),
            Column("longest_run", "int64", 0),
        ]

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, values: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``p`` per reading (1 unless stuck), then update the runs; ``n`` counts the
        sensor's readings, this one included."""
        repeat = values == cols["last_value"][slots]
        prev_run = cols["stuck_run"][slots]
        run = np.where(repeat, prev_run + 1, 0)
        longest = cols["longest_run"][slots]
        # A run that just ended raises the bar for what counts as stuck later.
        cols["longest_run"][slots] = np.where(repeat, longest, np.maximum(longest, prev_run))
        rate = cols["repeat_rate"][slots]
        cols["repeat_rate"][slots] = rate + np.maximum(1.0 / n, self.alpha_min) * (repeat - rate)
        cols["stuck_run"][slots] = run
        cols["last_value"][slots] = values
        if self.readings <= 0:
            return np.ones(len(slots))
        stuck = run >= np.maximum(self.readings, 2 * longest + 1)
        return np.where(stuck, np.power(np.clip(rate, 1e-3, 0.999), run - longest), 1.0)
