"""Residuals and other evidence into calibrated anomaly scores in [0, 1], per sensor.

The forecast residual, standardised by the sensor's normalising scale (or the
forecast's predicted deviation), goes through a :class:`TailEstimator`: ``p`` is the
estimated probability of a residual at least this large *for this sensor*. Beside it
the scorer weighs a value beyond the sensor's range, a value far from its usual
level at this time of day, a run of large residuals and a shape of the recent
readings unlike any the sensor has shown lately (:mod:`.evidence`). The reading's
*surprise* is the strongest piece of evidence, Bonferroni-corrected for looking at several
(``p = k * min(p_i)``), on the scale of :func:`score_from_probability`; a stuck
sensor raises it too.

The *anomaly score* is the surprise when it is news: a reading no more surprising
than the sensor's recent peak (decaying with half-life ``onset_halflife`` readings)
scores 0, and an onset lifts that peak by a margin, so one incident yields one high
score at its onset rather than a burst.
Alerts are opened and resolved on the surprise, which keeps its level for as long as
the sensor misbehaves (see :class:`~streamrnn.core.alerts.Alerter`).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass as parameters

from .calibration import TailEstimator, score_from_probability
from .evidence import DailyProfile, PatternNovelty, RangeNovelty, StuckCheck, SustainedResidual
from .halflife import halflife_decay
from .parameters import PARAMS
from .state import Column

__all__ = ["OnsetFilter", "Scorer", "ScoringParams"]


@parameters(frozen=True, kw_only=True, config=PARAMS)
class ScoringParams:
    """Turning forecasts and residuals into anomaly scores."""

    normaliser_halflife: float = Field(default=2000.0, gt=1, description="Half-life, in readings, of each sensor's running mean/variance used to normalise its values.")
    calibration_halflife: float = Field(default=500.0, gt=1, description="Half-life, in readings, of each sensor's residual scale used to calibrate scores.")
    calibration_clip: float = Field(default=6.0, gt=1, description="Calibrated residuals above this count as this much when updating the scale (anomalies do not inflate it).")
    tail_halflife: float = Field(default=2000.0, gt=1, description="Half-life, in readings, of each sensor's residual tail estimate behind the score.")
    tail_prior_weight: float = Field(default=20.0, ge=0, description="Pseudo-readings of an exponential tail that a sensor's tail estimate is shrunk towards.")
    learn_after: int = Field(default=30, ge=0, description="Forecasts a sensor makes before its residuals start to calibrate its scores.")
    use_predicted_std: bool = Field(default=False, description="Standardise residuals by the forecast's predicted deviation (variance head) instead of the sensor's normalising scale (measured worse on both the synthetic fleet and NAB DEV).")
    stuck_readings: int = Field(default=30, ge=0, description="Identical consecutive values that mark a normally noisy sensor as stuck (0 disables).")
    range_tolerance: float = Field(default=0.05, ge=0, description="A value beyond the sensor's past range by more than this fraction of the range's width is evidence of an anomaly (0 disables).")
    range_halflife: float = Field(default=20000.0, ge=0, description="Half-life, in readings, with which the remembered range relaxes towards the running mean (0: never).")
    profile_bins: int = Field(default=48, ge=0, le=1440, description="Slots of the UTC day in each sensor's time-of-day profile; a value far from its slot's usual level is evidence (0 disables).")
    profile_halflife_days: float = Field(default=2.0, gt=0, description="Half-life, in days, of each time-of-day slot's mean.")
    sustain_window: int = Field(default=10, ge=0, le=1000, description="Readings over which the mean residual is judged as well, so a shift that keeps the forecast off counts even when single residuals of its size have been seen (0 disables).")
    pattern_windows: int = Field(default=256, ge=0, le=100_000, description="Past shapes of the last 96 readings (one kept every 4 readings) each sensor compares its recent readings with; a shape unlike all of them is evidence (0 disables, else more than 24; 4 KiB per sensor at 256).")
    onset_halflife: float = Field(default=50.0, ge=0, description="The anomaly score is 0 unless the reading is more surprising than the sensor's recent peak, which decays with this half-life in readings (0: score every reading).")
    onset_margin: float = Field(default=0.1, ge=0, le=1, description="An onset lifts the recent peak by this much more, so a build-up within one incident scores once (0.1: a later reading must be ten times rarer).")

    @field_validator("pattern_windows")
    @classmethod
    def _pattern_windows_reach_past_the_overlap(cls, v: int) -> int:
        if 0 < v <= PatternNovelty.OVERLAP:
            raise ValueError(f"must be 0 (off) or more than {PatternNovelty.OVERLAP}: the newest {PatternNovelty.OVERLAP} kept windows "
                             "overlap the current one and are never compared")
        return v


class OnsetFilter:
    """Keeps a surprise as the anomaly score only when it tops the sensor's recent peak.

    The peak decays with half-life ``halflife`` readings. An onset raises it by
    ``margin`` more, so an incident whose evidence builds up over several readings
    (a pattern drifting further from anything seen) yields one onset, and another
    only once it is ``margin`` more surprising (0.1: ten times rarer).
    """

    def __init__(self, *, halflife: float, margin: float) -> None:
        self.decay = halflife_decay(halflife)
        self.margin = float(margin)

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [Column("recent_peak", "float64", 0.0)]

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, surprise: np.ndarray) -> np.ndarray:
        """Anomaly scores for one wave; updates the decaying peaks."""
        if not self.decay:
            return surprise.copy()
        peak = cols["recent_peak"][slots]
        onset = surprise > peak
        cols["recent_peak"][slots] = np.where(onset & (surprise > 0), surprise + self.margin, np.maximum(surprise, peak * self.decay))
        return np.where(onset, surprise, 0.0)


class Scorer:
    """Turns one wave of readings and their forecasts into surprises and anomaly scores.

    ``params.range_tolerance <= 0`` turns off the range check, ``profile_bins = 0`` the
    time-of-day profile, ``sustain_window = 0`` the run of residuals, ``pattern_windows = 0``
    the pattern novelty and ``onset_halflife = 0`` the onset filter (the score is then the
    surprise).
    """

    def __init__(self, params: ScoringParams) -> None:
        s = self.params = params

        def tail(prefix: str) -> TailEstimator:  # every statistic's tail is learnt alike
            return TailEstimator(prefix, scale_halflife=s.calibration_halflife, tail_halflife=s.tail_halflife,
                                 prior_weight=s.tail_prior_weight, clip=s.calibration_clip)

        self.residual = tail("cal")
        self.range = RangeNovelty(tolerance=s.range_tolerance, halflife=s.range_halflife) if s.range_tolerance > 0 else None
        self.profile = (DailyProfile(bins=s.profile_bins, halflife_days=s.profile_halflife_days, tail=tail("profile"))
                        if s.profile_bins > 0 else None)
        self.sustained = (SustainedResidual(window=s.sustain_window, clip=s.calibration_clip, tail=tail("sustain"))
                          if s.sustain_window > 0 else None)
        self.pattern = PatternNovelty(windows=s.pattern_windows, tail=tail("pattern")) if s.pattern_windows > 0 else None
        self.stuck = StuckCheck(readings=s.stuck_readings, halflife=s.calibration_halflife)
        self.onset = OnsetFilter(halflife=s.onset_halflife, margin=s.onset_margin)
        # The first forecasts of a sensor come from a normaliser that has seen only a
        # few values; learning the residual distribution from them would inflate it.
        self.learn_after = s.learn_after
        # Judge a residual against the forecast's own predicted deviation (True), or
        # against the sensor's normalising scale only (False).
        self.use_predicted_std = s.use_predicted_std
        # Bonferroni: the surprise takes the strongest of this many tests.
        self._evidence = [e for e in (self.range, self.profile, self.sustained, self.pattern) if e is not None]
        self.n_tests = 1 + len(self._evidence)

    def columns(self) -> list[Column]:
        """State columns the scorer and its evidence own."""
        cols = self.residual.columns() + self.stuck.columns() + self.onset.columns()
        for e in self._evidence:
            cols += e.columns()
        return cols

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, ts: np.ndarray, values: np.ndarray, fc_mean: np.ndarray,
             fc_std: np.ndarray, scale: np.ndarray, mean: np.ndarray, interval: np.ndarray,
             count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores for one wave (each slot at most once).

        ``fc_mean`` and ``fc_std`` are the forecast and its predicted deviation, ``scale``
        is the sensor's normalising scale when the forecast was made, ``mean`` its running
        mean, ``interval`` its typical seconds between readings and ``count`` its readings
        so far, this one included (every reading after a sensor's first has a forecast).
        Returns ``(residual, surprise, score)``; a reading without a forecast yet has
        surprise and score 0.
        """
        residual = values - fc_mean
        miss = np.abs(residual)
        has_fc = np.isfinite(residual)
        learn = has_fc & (count - 1 > self.learn_after)
        spread = fc_std if self.use_predicted_std else scale
        r = np.where(has_fc, miss / np.where(has_fc, spread, 1.0), np.nan)
        p = self.residual.step(cols, slots, r, learn)
        if self.sustained is not None:
            # Judged against the forecast's own predicted deviation: a run of residuals
            # that the model expected (a busy hour) is not evidence, the same run in a
            # calm hour is (measured: +1.6 NAB DEV points over the normalising scale,
            # which scored below no run evidence at all).
            u = np.where(has_fc, miss / np.where(has_fc & (fc_std > 0), fc_std, np.inf), np.nan)
            p = np.minimum(p, self.sustained.step(cols, slots, u, count, learn))
        if self.range is not None:
            p = np.minimum(p, self.range.step(cols, slots, values, scale, mean, count - 1))
        if self.profile is not None:
            p = np.minimum(p, self.profile.step(cols, slots, ts, values, scale, interval, learn))
        if self.pattern is not None:
            p = np.minimum(p, self.pattern.step(cols, slots, values, scale, mean, count, learn))
        surprise = np.where(has_fc, score_from_probability(np.minimum(self.n_tests * p, 1.0)), 0.0)
        surprise = np.maximum(surprise, score_from_probability(self.stuck.step(cols, slots, values, count)))
        return residual, surprise, self.onset.step(cols, slots, surprise)
