"""The scorer's pieces on their own: tail estimates, range, time-of-day profile, runs of
residuals, pattern novelty, onset. Each compiled step runs on one sensor's state row."""

from __future__ import annotations

import math

import numpy as np

from streamrnn.core.calibration import PATTERN, PROFILE, RESIDUAL, SUSTAIN, TailKnobs, score_from_probability, tail_step
from streamrnn.core.evidence import (KEPT_DTYPE, PATTERN_LENGTH, PATTERN_SPAN, evidence_columns, pattern_step,
                                     profile_step, range_step, sustain_step)
from streamrnn.core.halflife import halflife_decay, halflife_weight
from streamrnn.core.scoring import Scorer, ScoringParams, onset_step
from streamrnn.core.state import StateBank

DEFAULTS = ScoringParams()
TAIL = Scorer(DEFAULTS).knobs.tail


class Sensor:
    """One sensor's state row with every scorer column, fed as the detector feeds it."""

    def __init__(self, **params: int) -> None:
        scoring = ScoringParams(**params)
        bank = StateBank(Scorer(scoring).columns(), max_sensors=1, initial_capacity=1)
        bank.assign(["s"])
        self.bank, self.n = bank, 0
        self.window = np.zeros(PATTERN_LENGTH + scoring.pattern_windows, np.float32)

    @property
    def row(self) -> np.void:
        return self.bank.rows[0]

    def tail(self, k: int, x: float, learn: bool = True) -> float:
        return tail_step(self.row, k, x, learn, TAIL)

    def scale(self, k: int) -> float:
        return float(np.sqrt(self.row["tail_scale2"][k]))

    def range(self, value: float, mean: float, halflife: float) -> float:
        self.n += 1  # the range check is told the readings before this one
        alpha = halflife_weight(halflife)
        return range_step(self.row, value, 1.0, mean, self.n - 1, 0.05, alpha, 1.0 / alpha if alpha else math.inf, True)

    def sustained(self, u: float, learn: bool = True) -> float:
        self.n += 1
        return sustain_step(self.row, u, self.n, 6.0, learn, TAIL)

    def pattern(self, value: float, learn: bool = True) -> float:
        self.n += 1
        return pattern_step(self.row, value, 1.0, 0.0, self.n, learn, TAIL, self.window)


def test_tail_estimator_learns_a_sensor_heavy_tail() -> None:
    rng = np.random.default_rng(0)
    light, heavy = Sensor(), Sensor()
    for x in np.abs(rng.normal(size=3000)):
        light.tail(RESIDUAL, x)
    for x in np.abs(rng.standard_t(2, size=3000)):
        heavy.tail(RESIDUAL, x)
    # a value of 6 typical scales is far rarer for the Gaussian sensor than for the heavy-tailed one
    p_light = light.tail(RESIDUAL, 6.0 * light.scale(RESIDUAL), learn=False)
    p_heavy = heavy.tail(RESIDUAL, 6.0 * heavy.scale(RESIDUAL), learn=False)
    assert p_light < 1e-4 < 1e-3 < p_heavy


def test_tail_estimator_calls_a_first_large_value_rare_not_impossible() -> None:
    est = Sensor()
    for x in np.abs(np.random.default_rng(1).normal(size=3000)):
        est.tail(PROFILE, x)
    scale = est.scale(PROFILE)
    p = [est.tail(PROFILE, k * scale, learn=False) for k in (8.0, 12.0, 40.0)]
    # never seen beyond ~4 scales: the prior's exponential tail decides, so 12 scales is
    # one in billions (not the 1e-300 a Gaussian prior gave) and a larger value still rarer
    assert 1e-12 < p[1] < 1e-6
    assert p[2] < p[1] < p[0]


def test_tail_estimator_survives_a_statistic_that_was_always_zero() -> None:
    est = Sensor()
    for _ in range(200):
        est.tail(SUSTAIN, 0.0)
    p = est.tail(SUSTAIN, 1e-9)
    assert np.isfinite(p) and p == 1.0  # below the scale floor: nothing unusual
    assert est.tail(SUSTAIN, float("nan")) == 1.0
    assert est.row["tail_n"][RESIDUAL] == 0 and est.row["tail_n"][SUSTAIN] == 201  # each statistic its own estimate


def test_range_novelty_flags_a_new_extreme_by_how_far_it_goes() -> None:
    feed = Sensor()
    gen = np.random.default_rng(1)
    for v in gen.uniform(0, 10, 999):
        feed.range(v, 5.0, halflife=0)
    lo, hi = feed.row["range_lo"], feed.row["range_hi"]
    inside = feed.range(5.0, 5.0, halflife=0)
    barely = feed.range(hi + 0.01 * (hi - lo), 5.0, halflife=0)
    hi = feed.row["range_hi"]
    beyond = feed.range(hi + 3.0, 5.0, halflife=0)
    assert inside == 1.0 and barely == 1.0  # within the tolerance of 5% of the width
    # 1001 readings before it: a new extreme is a 2-in-1001 event, and 3 scales beyond it exp(-3) of that
    assert np.isclose(beyond, 2.0 / 1001 * np.exp(-3.0))


def test_range_novelty_ignores_a_slow_trend_and_forgets_a_glitch() -> None:
    trend = Sensor()
    ps = [trend.range(0.01 * i + np.sin(i), 0.01 * i, halflife=0) for i in range(2000)]
    assert min(ps[100:]) == 1.0

    feed = Sensor()
    for i in range(2000):
        feed.range(20.0 + np.sin(i), 20.0, halflife=200)
    feed.range(1e6, 20.0, halflife=200)  # one glitch
    for i in range(2000, 7000):  # 25 half-lives
        feed.range(20.0 + np.sin(i), 20.0, halflife=200)
    assert feed.row["range_hi"] < 30.0  # the glitch's extreme relaxed back
    assert feed.range(60.0, 20.0, halflife=200) < 1e-3


def test_daily_profile_catches_a_value_normal_for_the_day_but_not_the_hour() -> None:
    prof = Sensor(profile_bins=24)
    gen = np.random.default_rng(2)
    hour = 3600.0

    def level(t: float) -> float:  # busy from 08:00 to 20:00 UTC, quiet at night
        return 100.0 if 8 <= (t % 86400) / hour < 20 else 10.0

    def step(t: float, v: float, learn: bool) -> float:
        return profile_step(prof.row, t, v, 40.0, 600.0, learn, True, 3.0, TAIL)

    ts = np.arange(0, 20 * 86400, 600.0)
    ps = [step(t, level(t) + gen.normal(0, 2), True) for t in ts]
    t = ts[-1] + 600.0 * ((3 * hour - ts[-1] % 86400) % 86400 / 600.0)  # next 03:00
    night_busy = step(t, 100.0, False)
    night_quiet = step(t + 600, 11.0, False)
    assert night_busy < 1e-6
    assert night_quiet > 0.05
    assert np.quantile(ps[3 * 144:], 0.999) > 1e-4  # normal days never look that unusual


def test_onset_filter_keeps_news_and_drops_repeats() -> None:
    s = Sensor()
    surprise = [0.1, 0.8, 0.8, 0.7, 0.9, 0.2] + [0.0] * 60 + [0.8]
    got = [onset_step(s.row, x, halflife_decay(10), DEFAULTS.onset_margin) for x in surprise]
    assert got[:6] == [0.1, 0.8, 0.0, 0.0, 0.9, 0.0]
    assert got[-1] == 0.8  # after the peak decayed the same surprise is news again
    assert onset_step(s.row, 0.3, halflife_decay(0), DEFAULTS.onset_margin) == 0.3


def test_onset_margin_makes_a_build_up_one_onset() -> None:
    surprise = [0.4, 0.45, 0.48, 0.52, 0.65]
    slow = Sensor()
    # the first reading opens the incident; the next one counts only when it is a decade rarer
    assert [onset_step(slow.row, x, halflife_decay(1e6), 0.1) for x in surprise] == [0.4, 0.0, 0.0, 0.52, 0.65]
    plain = Sensor()
    assert [onset_step(plain.row, x, halflife_decay(1e6), 0.0) for x in surprise] == surprise


def test_sustained_residual_flags_a_run_that_larger_spikes_do_not_explain() -> None:
    feed = Sensor()
    rng = np.random.default_rng(3)
    spike_ps = []
    for i in range(3000):
        u = 30.0 if i % 300 == 150 else abs(rng.normal())  # an isolated spike every 300 readings
        p = feed.sustained(u)
        if i % 300 == 150:
            spike_ps.append(p)
    # a shift that keeps the forecast 4 deviations off for ten readings is news, though each residual is smaller than the spikes
    run = [feed.sustained(4.0, learn=False) for _ in range(10)]
    assert run[-1] < 1e-4
    # an isolated spike lifts the ten-reading mean only a little
    assert min(spike_ps[3:]) > 1e-3
    assert run[-1] < run[0]
    # a sensor's first reading has no forecast: no window is judged until ten readings have one
    fresh = Sensor()
    ps = [fresh.sustained(np.nan if i == 0 else 50.0) for i in range(11)]
    # (then it is judged by the prior alone: a mean of 6 deviations, exp(-6 sqrt 2) = 2e-4)
    assert ps[:10] == [1.0] * 10 and ps[10] < 1e-3


def test_pattern_novelty_flags_a_new_shape_within_the_usual_range() -> None:
    feed = Sensor(pattern_windows=256)
    noise = np.random.default_rng(4).normal(scale=0.05, size=3192)
    for i in range(3000):  # a daily-like cycle of 96 readings
        feed.pattern(float(np.sin(2 * np.pi * i / 96.0) + noise[i]))
    same = [feed.pattern(float(np.sin(2 * np.pi * i / 96.0) + noise[i]), learn=False) for i in range(3000, 3096)]
    # the usual shape is ordinary: rarely below 1 %, never near the new shape's values
    assert min(same) > 1e-3 and np.mean(np.array(same) < 0.01) <= 0.05
    # the same values in a new shape: a cycle three times as fast, never leaving [-1, 1]
    new = [feed.pattern(float(np.sin(2 * np.pi * i / 32.0) + noise[i]), learn=False) for i in range(3096, 3192)]
    assert min(new) < 1e-6
    # memory is bounded: 256 windows of 8 block means per sensor, whatever the history
    assert feed.bank["pattern_kept"].shape == (1, PATTERN_LENGTH, 256)
    assert feed.row["tail_n"][PATTERN] > 0


def test_pattern_novelty_never_matches_a_window_with_itself() -> None:
    feed = Sensor(pattern_windows=64)
    ps = [feed.pattern(float(i % 7 == 0)) for i in range(PATTERN_SPAN + 40)]
    # until a whole earlier window exists that does not overlap the current one, nothing is judged
    assert ps == [1.0] * len(ps)


def test_pattern_block_sums_slide_exactly_enough() -> None:
    feed = Sensor(pattern_windows=64)
    for v in np.random.default_rng(5).normal(scale=3.0, size=1000):
        feed.pattern(float(v))
    n = feed.n
    ring = feed.row["pattern_recent"]
    oldest_first = ring[(n + 1 + np.arange(PATTERN_SPAN)) % PATTERN_SPAN].astype(np.float64)
    exact = oldest_first.reshape(PATTERN_LENGTH, -1).sum(axis=1)
    np.testing.assert_allclose(feed.row["pattern_sums"], exact, atol=1e-4)


def test_evidence_that_is_off_costs_no_state() -> None:
    cols = {c.name: c for c in evidence_columns(profile_bins=0, sustain_window=0, pattern_windows=0)}
    assert cols["pattern_kept"].shape == (PATTERN_LENGTH, 0) and cols["profile_mean"].shape == (0,)
    off = StateBank(list(cols.values()), max_sensors=1, initial_capacity=1).row_dtype.itemsize
    on = StateBank(evidence_columns(profile_bins=48, sustain_window=10, pattern_windows=256), max_sensors=1,
                   initial_capacity=1).row_dtype.itemsize
    assert on - off >= 256 * PATTERN_LENGTH * np.dtype(KEPT_DTYPE).itemsize


def test_scores_map_probabilities_onto_decades() -> None:
    s = score_from_probability(np.array([1.0, 1e-3, 1e-5, 1e-12]))
    assert s.tolist() == [0.0, 0.3, 0.5, 1.0]
    assert not np.signbit(s[0])
    assert isinstance(TAIL, TailKnobs)


def test_no_tail_prior_is_a_valid_setting_not_a_crash() -> None:
    # tail_prior_weight 0 passes validation, so a sensor's first forecasts (nothing learnt
    # yet, no prior) must score as ordinary rather than divide by zero
    knobs = Scorer(ScoringParams(tail_prior_weight=0.0)).knobs.tail
    est = Sensor()
    assert tail_step(est.row, RESIDUAL, 50.0, True, knobs) == 1.0
    for x in np.abs(np.random.default_rng(2).normal(size=2000)):
        tail_step(est.row, RESIDUAL, x, True, knobs)
    # once learnt, the empirical tail alone calls a far value rare
    assert tail_step(est.row, RESIDUAL, 8.0 * est.scale(RESIDUAL), False, knobs) < 1e-3
