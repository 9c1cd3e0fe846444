"""Residuals and other evidence into calibrated anomaly scores in [0, 1], per sensor.

The forecast residual, standardised by the sensor's normalising scale (or the
forecast's predicted deviation), goes through a tail estimate
(:mod:`.calibration`): ``p`` is the estimated probability of a residual at least
this large *for this sensor*. A reading that comes several typical intervals late
is judged per interval missed, since its forecast was for one interval ahead, and
teaches the tail nothing. Beside it the scorer weighs a value beyond the sensor's
range, a value far from its usual level at this time of day, a run of large residuals
and a shape of the recent readings unlike any the sensor has shown lately
(:mod:`.evidence`). The reading's *surprise* is the strongest piece of evidence,
Bonferroni-corrected for looking at several (``p = k * min(p_i)``), on the scale of
:func:`~.calibration.score_from_probability`; a stuck sensor raises it too.

The *anomaly score* is the surprise when it is news: a reading no more surprising
than the sensor's recent peak (decaying with half-life ``onset_halflife`` readings)
scores 0, and an onset lifts that peak by a margin, so one incident yields one high
score at its onset rather than a burst. Alerts are opened and resolved on the
surprise, which keeps its level for as long as the sensor misbehaves
(see :mod:`.alerts`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit
from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass as parameters

from .calibration import RESIDUAL, TailKnobs, surprise_from, tail_columns, tail_step
from .evidence import PATTERN_OVERLAP, evidence_columns, pattern_step, profile_step, range_step, stuck_step, sustain_step
from .halflife import halflife_decay, halflife_weight
from .parameters import PARAMS
from .state import Column

__all__ = ["EVIDENCE", "Scorer", "ScoringKnobs", "ScoringParams", "onset_step", "score_step"]

EVIDENCE = ("residual", "run", "range", "time_of_day", "pattern", "stuck")
"""Names of the pieces of evidence, by the code :func:`score_step` returns: what an alert says fired it."""
RESIDUAL_EV, RUN_EV, RANGE_EV, PROFILE_EV, PATTERN_EV, STUCK_EV = range(len(EVIDENCE))


@parameters(frozen=True, kw_only=True, config=PARAMS)
class ScoringParams:
    """Turning forecasts and residuals into anomaly scores."""

    normaliser_halflife: float = Field(default=2000.0, gt=1, description="Half-life, in readings, of each sensor's running mean/variance used to normalise its values.")
    calibration_halflife: float = Field(default=500.0, gt=1, description="Half-life, in readings, of each sensor's residual scale used to calibrate scores.")
    calibration_clip: float = Field(default=6.0, gt=1, description="Calibrated residuals above this count as this much when updating the scale (anomalies do not inflate it).")
    tail_halflife: float = Field(default=2000.0, gt=1, description="Half-life, in readings, of each sensor's residual tail estimate behind the score.")
    tail_prior_weight: float = Field(default=20.0, ge=0, description="Pseudo-readings of an exponential tail that a sensor's tail estimate is shrunk towards.")
    learn_after: int = Field(default=30, ge=0, description="Forecasts a sensor makes before its residuals start to calibrate its scores.")
    late_after: float = Field(default=2.0, ge=0, description="A reading more than this many typical intervals after the one before has its residual judged per interval missed and teaches the tail nothing (the forecast was for one interval ahead; 0: judge every reading as on time).")
    use_predicted_std: bool = Field(default=False, description="Standardise residuals by the forecast's predicted deviation (variance head) instead of the sensor's normalising scale (measured worse on both the synthetic fleet and NAB DEV).")
    stuck_readings: int = Field(default=30, ge=0, description="Identical consecutive values that mark a normally noisy sensor as stuck (0 disables).")
    range_tolerance: float = Field(default=0.05, ge=0, description="A value beyond the sensor's past range by more than this fraction of the range's width is evidence of an anomaly (0 disables).")
    range_halflife: float = Field(default=20000.0, ge=0, description="Half-life, in readings, with which the remembered range relaxes towards the running mean (0: never).")
    profile_bins: int = Field(default=48, ge=0, le=1440, description="Slots of the UTC day in each sensor's time-of-day profile; a value far from its slot's usual level is evidence (0 disables).")
    profile_halflife_days: float = Field(default=2.0, gt=0, description="Half-life, in days, of each time-of-day slot's mean.")
    sustain_window: int = Field(default=10, ge=0, le=1000, description="Readings over which the mean residual is judged as well, so a shift that keeps the forecast off counts even when single residuals of its size have been seen (0 disables).")
    pattern_windows: int = Field(default=256, ge=0, le=100_000, description="Past shapes of the last 96 readings (one kept every 4 readings) each sensor compares its recent readings with; a shape unlike all of them is evidence (0 disables, else more than 24; 2 KiB per sensor at 256).")
    onset_halflife: float = Field(default=50.0, ge=0, description="The anomaly score is 0 unless the reading is more surprising than the sensor's recent peak, which decays with this half-life in readings (0: score every reading).")
    onset_margin: float = Field(default=0.1, ge=0, le=1, description="An onset lifts the recent peak by this much more, so a build-up within one incident scores once (0.1: a later reading must be ten times rarer).")

    @field_validator("pattern_windows")
    @classmethod
    def _pattern_windows_reach_past_the_overlap(cls, v: int) -> int:
        if 0 < v <= PATTERN_OVERLAP:
            raise ValueError(f"must be 0 (off) or more than {PATTERN_OVERLAP}: the newest {PATTERN_OVERLAP} kept windows "
                             "overlap the current one and are never compared")
        return v


class ScoringKnobs(NamedTuple):
    """:class:`ScoringParams` as the compiled pass uses them (weights, not half-lives)."""

    tail: TailKnobs
    learn_after: int
    late_after: float
    use_predicted_std: bool
    clip: float
    stuck_readings: int
    stuck_alpha: float
    range_on: bool
    range_tolerance: float
    range_alpha: float
    range_memory: float
    profile_on: bool
    profile_halflife_days: float
    sustain_on: bool
    pattern_on: bool
    onset_decay: float
    onset_margin: float
    n_tests: int


@njit(cache=True)
def onset_step(r: np.void, surprise: float, decay: float, margin: float) -> float:
    """The anomaly score of a surprise: itself when it tops the sensor's recent peak, else 0.

    The peak decays by ``decay`` per reading. An onset raises it by ``margin`` more, so
    an incident whose evidence builds up over several readings (a pattern drifting
    further from anything seen) yields one onset, and another only once it is
    ``margin`` more surprising (0.1: ten times rarer). ``decay`` 0 scores every reading.
    """
    if decay == 0.0:
        return surprise
    peak = r["recent_peak"]
    onset = surprise > peak
    r["recent_peak"] = surprise + margin if onset and surprise > 0 else max(surprise, peak * decay)
    return surprise if onset else 0.0


@njit(cache=True)
def score_step(r: np.void, t: float, v: float, fc_mean: float, fc_std: float, scale: float, mean: float, interval: float,
               steps: float, count: int, glitch: bool, k: ScoringKnobs, scratch: np.ndarray) -> tuple[float, float, float, int, float]:
    """``(residual, surprise, anomaly score, evidence, p)`` of one reading, updating the
    scorer's state; ``evidence`` is the code (in :data:`EVIDENCE`) of the strongest piece
    of evidence and ``p`` its probability, before the correction for looking several ways.

    ``fc_mean`` and ``fc_std`` are the forecast and its predicted deviation, ``scale``
    the sensor's normalising scale when the forecast was made, ``mean`` its running
    mean, ``interval`` its typical seconds between readings, ``steps`` how many typical
    intervals this reading came after the one before, and ``count`` its readings
    so far, this one included (every reading after a sensor's first has a forecast;
    one without has surprise and score 0). A ``glitch`` (see :data:`~.features.GLITCH`)
    is scored but teaches no evidence. ``scratch`` is working space for the pattern.
    """
    residual = v - fc_mean
    miss = abs(residual)
    has_fc = math.isfinite(residual)
    # The forecast was for one typical interval ahead. After a gap the sensor has moved
    # on by as many steps as it missed, so its residual is no one-step error: judged as
    # one, each gap looked like an anomaly, and taught the tail estimate that errors of
    # that size are common, hiding real ones of the same size. A late reading's residual
    # is judged per step missed (an error that grew linearly over the gap, the most a
    # smooth sensor's drift allows) and teaches nothing; only a change far beyond
    # any drift (a flat sensor come alive) still counts.
    late = k.late_after > 0 and steps > k.late_after
    spread = (fc_std if k.use_predicted_std else scale) * (steps if late else 1.0)
    # The first forecasts of a sensor come from a normaliser that has seen only a
    # few values; learning the residual distribution from them would inflate it.
    learn = has_fc and count - 1 > k.learn_after and not glitch
    p = tail_step(r, RESIDUAL, miss / spread if has_fc else math.nan, learn and not late, k.tail)
    ev = RESIDUAL_EV
    if k.sustain_on:
        # Judged against the forecast's own predicted deviation: a run of residuals
        # that the model expected (a busy hour) is not evidence, the same run in a
        # calm hour is.
        u = (miss / fc_std if fc_std > 0 else 0.0) if has_fc and not late else math.nan
        q = sustain_step(r, u, count, k.clip, learn, k.tail)
        if q < p:
            p, ev = q, RUN_EV
    if k.range_on:
        q = range_step(r, v, scale, mean, count - 1, k.range_tolerance, k.range_alpha, k.range_memory, not glitch)
        if q < p:
            p, ev = q, RANGE_EV
    if k.profile_on:
        q = profile_step(r, t, v, scale, interval, learn, not glitch, k.profile_halflife_days, k.tail)
        if q < p:
            p, ev = q, PROFILE_EV
    if k.pattern_on:
        q = pattern_step(r, v, scale, mean, count, learn, k.tail, scratch)
        if q < p:
            p, ev = q, PATTERN_EV
    surprise = surprise_from(min(k.n_tests * p, 1.0)) if has_fc else 0.0
    q = stuck_step(r, v, count, k.stuck_readings, k.stuck_alpha)
    stuck = surprise_from(q)
    if stuck > surprise:
        surprise, p, ev = stuck, q, STUCK_EV
    return residual, surprise, onset_step(r, surprise, k.onset_decay, k.onset_margin), ev, p


class Scorer:
    """The scorer's state columns and compiled settings, from :class:`ScoringParams`.

    ``range_tolerance <= 0`` turns off the range check, ``profile_bins = 0`` the
    time-of-day profile, ``sustain_window = 0`` the run of residuals, ``pattern_windows = 0``
    the pattern novelty and ``onset_halflife = 0`` the onset filter (the score is then the
    surprise).
    """

    def __init__(self, params: ScoringParams) -> None:
        s = self.params = params
        range_alpha = halflife_weight(s.range_halflife)
        on = (s.range_tolerance > 0, s.profile_bins > 0, s.sustain_window > 0, s.pattern_windows > 0)
        self.knobs = ScoringKnobs(
            tail=TailKnobs.of(scale_halflife=s.calibration_halflife, tail_halflife=s.tail_halflife,
                              prior_weight=s.tail_prior_weight, clip=s.calibration_clip),
            learn_after=s.learn_after, late_after=s.late_after, use_predicted_std=s.use_predicted_std, clip=s.calibration_clip,
            stuck_readings=s.stuck_readings, stuck_alpha=halflife_weight(s.calibration_halflife),
            range_on=on[0], range_tolerance=s.range_tolerance, range_alpha=range_alpha,
            range_memory=1.0 / range_alpha if range_alpha > 0 else math.inf,
            profile_on=on[1], profile_halflife_days=s.profile_halflife_days, sustain_on=on[2], pattern_on=on[3],
            onset_decay=halflife_decay(s.onset_halflife), onset_margin=s.onset_margin,
            # Bonferroni: the surprise takes the strongest of this many tests.
            n_tests=1 + sum(on),
        )

    def columns(self) -> list[Column]:
        """State columns the scorer and its evidence own."""
        s = self.params
        return tail_columns() + evidence_columns(profile_bins=s.profile_bins, sustain_window=s.sustain_window,
                                                 pattern_windows=s.pattern_windows) + [Column("recent_peak", "float64", 0.0)]
