"""Evidence beside the forecast residual, each as a per-sensor tail probability.

A one-step forecaster judges a reading against the last few: it misses a value that
is ordinary for the moment but extraordinary for the sensor, and it never misses a
sensor that is merely predictable. Each step here looks at one reading of one sensor
from one more angle and returns ``p``, the probability of evidence at least this
strong for a normal reading of this sensor (1: nothing unusual):

* :func:`range_step`: the value lies beyond everything the sensor has shown;
* :func:`profile_step`: the value is far from the sensor's usual value at this time
  of day;
* :func:`sustain_step`: the forecast has been off for several readings in a row;
* :func:`pattern_step`: the shape of the recent readings is unlike any the sensor
  has shown lately;
* :func:`stuck_step`: the sensor repeats one value far longer than it ever did.

They are compiled functions on one sensor's state row, called by the scoring pass
(:mod:`.kernel`) for every reading in per-sensor time order; :func:`evidence_columns`
declares the fields they keep.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .calibration import PATTERN, PROFILE, SUSTAIN, TailKnobs, tail_step
from .state import Column

__all__ = [
    "KEPT_DTYPE", "PATTERN_BLOCK", "PATTERN_EVERY", "PATTERN_LENGTH", "PATTERN_OVERLAP", "PATTERN_SPAN", "PROFILE_MIN_VISITS",
    "evidence_columns", "pattern_step", "profile_step", "range_step", "stuck_step", "sustain_step",
]

DAY = 86400.0

# The pattern evidence compares the last PATTERN_SPAN readings, reduced to
# PATTERN_LENGTH block means of PATTERN_BLOCK readings, with past windows kept one
# every PATTERN_EVERY readings; the newest PATTERN_OVERLAP kept windows overlap the
# current one and are never compared with it.
PATTERN_LENGTH = 8
PATTERN_BLOCK = 12
PATTERN_SPAN = PATTERN_LENGTH * PATTERN_BLOCK
PATTERN_EVERY = 4
PATTERN_OVERLAP = PATTERN_SPAN // PATTERN_EVERY
PATTERN_CLIP = 10.0  # a normalised value counts at most this far from the mean
# Recent readings are int16 fixed point (exact arithmetic on them): normalised values
# in [-PATTERN_CLIP, PATTERN_CLIP] at a resolution of 1/PATTERN_QUANTUM. Kept windows,
# most of the row's bytes, are one byte per block mean at a resolution of
# 1/KEPT_QUANTUM. They clip nearer the mean than the readings do: a block mean is
# rarely that far out, and over the narrower span a clean periodic sensor's noise is
# not drowned by the rounding (the window compared is clipped the same way but not
# rounded, so only the kept side carries rounding error).
PATTERN_QUANTUM = 3000.0
KEPT_DTYPE = "int8"
KEPT_CLIP = 5.0
KEPT_MAX = float(np.iinfo(KEPT_DTYPE).max)
KEPT_QUANTUM = KEPT_MAX / KEPT_CLIP

# A time-of-day slot's mean is trusted after this many visits.
PROFILE_MIN_VISITS = 3
PROFILE_MAX_VISITS = 65535  # the count is kept in 16 bits


def evidence_columns(*, profile_bins: int, sustain_window: int, pattern_windows: int) -> list[Column]:
    """State columns of every evidence (zero-length when that evidence is off)."""
    return [
        Column("range_lo", "float64", np.inf), Column("range_hi", "float64", -np.inf),
        # float32 slot means: the profile is a coarse reference, and it is most of the
        # memory this evidence costs per sensor. Visits saturate: past a few hundred the
        # half-life, not the count, sets a slot's weight.
        Column("profile_mean", "float32", 0.0, (profile_bins,)), Column("profile_visits", "uint16", 0, (profile_bins,)),
        Column("sustain_ring", "float32", 0.0, (sustain_window,)),
        # fixed point like the kept windows, so the sliding block sums are exact integers
        Column("pattern_recent", "int16", 0, (PATTERN_SPAN if pattern_windows else 0,)),
        Column("pattern_sums", "int32", 0, (PATTERN_LENGTH if pattern_windows else 0,)),
        # block-major: block b of every kept window side by side
        Column("pattern_kept", KEPT_DTYPE, 0, (PATTERN_LENGTH, pattern_windows)),
        Column("last_value", "float64", np.nan), Column("stuck_run", "int64", 0),
        Column("repeat_rate", "float64", 0.0), Column("longest_run", "int64", 0),
    ]


@njit(cache=True)
def range_step(r: np.void, v: float, scale: float, mean: float, n: int, tolerance: float, alpha: float, memory: float,
               widen: bool) -> float:
    """Scores a value outside the range the sensor has shown so far.

    Of ``n`` exchangeable readings (those before this one) the newest is the largest
    or the smallest with probability ``2 / n``, so a new extreme is that rare before
    looking at how far it goes; beyond the old extreme it is discounted by
    ``exp(-excess / scale)``. As in Numenta's NAB detector, only values beyond
    ``tolerance`` times the range's width count, so a slowly trending sensor does not
    call every small new record an anomaly. The range relaxes towards the running
    mean with weight ``alpha`` per reading, so one glitch does not blind the check;
    ``n`` is capped at that ``memory``. Unless ``widen``, the value does not extend the
    range (a glitch).
    """
    lo = r["range_lo"]
    hi = r["range_hi"]
    width = hi - lo
    excess = max(v - hi, lo - v)
    p = 1.0
    if n >= 2 and width > 0 and excess > tolerance * width:
        p0 = 2.0 / min(max(float(n), 2.0), memory)
        s = scale if math.isfinite(scale) and scale > 0 else math.inf
        p = p0 * math.exp(-excess / s)
    if widen:
        lo = min(lo, v)
        hi = max(hi, v)
    if alpha:
        m = mean if math.isfinite(mean) else v
        lo, hi = lo + alpha * (min(m, hi) - lo), hi + alpha * (max(m, lo) - hi)
    r["range_lo"] = lo
    r["range_hi"] = hi
    return p


@njit(cache=True)
def profile_step(r: np.void, t: float, v: float, scale: float, interval: float, learn: bool, follow: bool,
                 halflife_days: float, tail: TailKnobs) -> float:
    """Scores the distance of a value from the sensor's usual value at this time of day.

    Each sensor keeps the mean of its values in slots of the UTC day, each an
    exponentially weighted mean with a half-life of ``halflife_days`` (converted to
    visits of the slot from the sensor's typical reading ``interval``). The distance
    of a reading from its slot's mean, in units of the normalising ``scale``, goes
    through a tail estimate, so a sensor without a daily rhythm is judged by how far
    its values usually stray and one with a strong rhythm catches a value that is
    normal for the day but not for the hour (a holiday, a shifted shift).
    """
    means = r["profile_mean"]
    visits = r["profile_visits"]
    bins = means.shape[0]
    b = min(max(int((t % DAY) * (bins / DAY)), 0), bins - 1)
    mean = float(means[b])
    k = int(visits[b])
    ready = k >= PROFILE_MIN_VISITS and math.isfinite(scale) and scale > 0
    p = tail_step(r, PROFILE, abs(v - mean) / scale if ready else math.nan, learn and ready, tail)
    visits_per_day = DAY / (bins * max(interval, 1e-3))
    halflife_visits = max(halflife_days * visits_per_day, 1.0)
    a = max(1.0 / (k + 1), 1.0 - 0.5 ** (1.0 / halflife_visits))
    if follow:  # a glitch does not move the slot's mean
        means[b] = mean + a * (v - mean)
        visits[b] = min(k + 1, PROFILE_MAX_VISITS)
    return p


@njit(cache=True)
def sustain_step(r: np.void, u: float, n: int, clip: float, learn: bool, tail: TailKnobs) -> float:
    """Scores a forecast that has been off for several readings in a row.

    One large residual is judged on its own by the residual tail; once a sensor has
    shown a few spikes, that tail is heavy and a later shift of the same size looks
    ordinary. A shift, though, keeps the residuals up while the forecast catches up,
    which spikes do not. The statistic is the mean of the last ``window`` values of
    ``u`` (the absolute residual over the forecast's predicted deviation, NaN without a
    forecast), each capped at ``clip``, judged by its own tail estimate: the windowed
    mean of raw anomaly scores that Numenta's anomaly likelihood uses. ``n`` counts
    the sensor's readings, this one included.
    """
    ring = r["sustain_ring"]
    window = ring.shape[0]
    ring[n % window] = min(u, clip) if math.isfinite(u) else 0.0
    # a window is complete once it holds only readings that had a forecast
    if n <= window:
        return tail_step(r, SUSTAIN, math.nan, False, tail)
    total = 0.0
    for i in range(window):
        total += ring[i]
    return tail_step(r, SUSTAIN, total / window, learn, tail)


@njit(cache=True)
def _kept(n: int) -> int:
    """Windows kept after ``n`` readings (one at reading PATTERN_SPAN, then every PATTERN_EVERY)."""
    return max(n // PATTERN_EVERY - (PATTERN_SPAN - 1) // PATTERN_EVERY, 0)


@njit(cache=True, inline="always")
def _nearest(kept: np.ndarray, window: np.ndarray, d2s: np.ndarray, lo: int, hi: int, best: np.float32) -> np.float32:
    """The smaller of ``best`` and the squared distances of ``window`` to kept windows
    ``lo:hi`` (``d2s`` is scratch). Plain loops over windows, so they vectorise."""
    for j in range(lo, hi):
        d2s[j] = 0.0
    for b in range(PATTERN_LENGTH):
        wb = window[b]
        blocks = kept[b]
        for j in range(lo, hi):
            d = np.float32(blocks[j]) - wb
            d2s[j] += d * d
    for j in range(lo, hi):
        if d2s[j] < best:
            best = d2s[j]
    return best


@njit(cache=True)
def pattern_step(r: np.void, v: float, scale: float, mean: float, n: int, learn: bool, tail: TailKnobs,
                 scratch: np.ndarray) -> float:
    """Scores a shape of the recent readings unlike any the sensor has shown lately.

    A change of pattern with values in the usual range (a new periodic dip, a busy
    day that looks like a quiet one) leaves each reading ordinary for the forecast,
    the range and the time of day. This evidence looks at the last PATTERN_SPAN
    readings as a whole: normalised by the sensor's running ``mean`` and ``scale`` and
    reduced to PATTERN_LENGTH block means, the window is compared with the past
    windows the sensor keeps in a ring, leaving out those that overlap it. The
    distance to the nearest one (root mean square per block) goes through a tail
    estimate: a shape far from everything seen lately is rare. It is the
    nearest-neighbour distance that discord search (matrix profile) and ART-style
    novelty detectors use, with a memory bounded per sensor. ``n`` counts the
    sensor's readings, this one included; ``scratch`` holds at least
    ``PATTERN_LENGTH`` + windows float32.
    """
    recent = r["pattern_recent"]
    sums = r["pattern_sums"]
    kept = r["pattern_kept"]
    n_windows = kept.shape[1]
    window = scratch[:PATTERN_LENGTH]
    d2s = scratch[PATTERN_LENGTH:PATTERN_LENGTH + n_windows]
    ok = math.isfinite(scale) and scale > 0 and math.isfinite(mean)
    z = round(min(max((v - mean) / scale, -PATTERN_CLIP), PATTERN_CLIP) * PATTERN_QUANTUM) if ok else 0
    # Block sums slide with the window: each block gives its oldest reading to the block
    # before and takes the next block's oldest (the newest block takes this reading).
    for b in range(PATTERN_LENGTH):
        gain = z if b == PATTERN_LENGTH - 1 else int(recent[(n + (b + 1) * PATTERN_BLOCK) % PATTERN_SPAN])
        sums[b] += gain - int(recent[(n + b * PATTERN_BLOCK) % PATTERN_SPAN])
    recent[n % PATTERN_SPAN] = z
    before = _kept(n - 1)
    due = n >= PATTERN_SPAN and n % PATTERN_EVERY == 0
    comparable = before > PATTERN_OVERLAP  # an earlier window that does not overlap this one exists
    if not (comparable or due):
        return tail_step(r, PATTERN, math.nan, False, tail)
    for b in range(PATTERN_LENGTH):  # block means, oldest first
        window[b] = min(max(sums[b] * (KEPT_QUANTUM / (PATTERN_BLOCK * PATTERN_QUANTUM)), -KEPT_MAX), KEPT_MAX)

    # Usable kept windows are those older than the PATTERN_OVERLAP newest: one stretch
    # of the ring, at most two contiguous pieces, scanned window-minor so the compiler
    # vectorises over windows.
    newest = (before - 1) % n_windows
    held = min(before, n_windows)
    first = (newest - (held - 1)) % n_windows
    count = held - PATTERN_OVERLAP
    best = _nearest(kept, window, d2s, first, min(first + count, n_windows), np.float32(np.inf))
    best = _nearest(kept, window, d2s, 0, max(first + count - n_windows, 0), best)
    dist = math.sqrt(best / PATTERN_LENGTH) / KEPT_QUANTUM if comparable else math.nan
    p = tail_step(r, PATTERN, dist, learn and comparable, tail)

    if due:
        at = (_kept(n) - 1) % n_windows
        for b in range(PATTERN_LENGTH):
            kept[b, at] = round(window[b])
    return p


@njit(cache=True)
def stuck_step(r: np.void, v: float, n: int, readings: int, alpha: float) -> float:
    """Scores a sensor that repeats exactly the same value far longer than it ever did.

    A stuck transmitter produces tiny residuals, so a forecast alone never catches it.
    A run counts as stuck at ``readings`` repeats and more than twice the longest run
    the sensor has shown; ``p`` is how unlikely such a run is at the sensor's usual
    repeat rate (learnt with weight ``alpha``). ``n`` counts the sensor's readings,
    this one included.
    """
    repeat = v == r["last_value"]
    prev_run = r["stuck_run"]
    run = prev_run + 1 if repeat else 0
    longest = r["longest_run"]
    if not repeat:  # a run that just ended raises the bar for what counts as stuck later
        r["longest_run"] = max(longest, prev_run)
    rate = r["repeat_rate"]
    r["repeat_rate"] = rate + max(1.0 / n, alpha) * ((1.0 if repeat else 0.0) - rate)
    r["stuck_run"] = run
    r["last_value"] = v
    if readings <= 0 or run < max(readings, 2 * longest + 1):
        return 1.0
    return min(max(rate, 1e-3), 0.999) ** (run - longest)
