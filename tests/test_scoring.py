"""The scorer's pieces on their own: tail estimates, range, time-of-day profile, runs of
residuals, pattern novelty, onset."""

from __future__ import annotations

import numpy as np

from streamrnn.core.calibration import TailEstimator, score_from_probability
from streamrnn.core.evidence import DailyProfile, PatternNovelty, RangeNovelty, SustainedResidual
from streamrnn.core.scoring import OnsetFilter, ScoringParams
from streamrnn.core.state import StateBank

ONE = np.zeros(1, dtype=np.int64)
DEFAULTS = ScoringParams()


def tail(prefix: str) -> TailEstimator:
    """A tail estimator with the scorer's default settings."""
    d = DEFAULTS
    return TailEstimator(prefix, scale_halflife=d.calibration_halflife, tail_halflife=d.tail_halflife,
                         prior_weight=d.tail_prior_weight, clip=d.calibration_clip)


def bank_for(component) -> dict[str, np.ndarray]:
    bank = StateBank(component.columns(), max_sensors=1, initial_capacity=1)
    bank.assign(["s"])
    return bank.arrays


def test_tail_estimator_learns_a_sensor_heavy_tail() -> None:
    rng = np.random.default_rng(0)
    light, heavy = tail("a"), tail("b")
    cl, ch = bank_for(light), bank_for(heavy)
    for x in np.abs(rng.normal(size=3000)):
        light.step(cl, ONE, np.array([x]), np.array([True]))
    for x in np.abs(rng.standard_t(2, size=3000)):
        heavy.step(ch, ONE, np.array([x]), np.array([True]))
    # a value of 6 typical scales is far rarer for the Gaussian sensor than for the heavy-tailed one
    p_light = light.step(cl, ONE, np.array([6.0 * np.sqrt(cl["a_scale2"][0])]), np.array([False]))[0]
    p_heavy = heavy.step(ch, ONE, np.array([6.0 * np.sqrt(ch["b_scale2"][0])]), np.array([False]))[0]
    assert p_light < 1e-4 < 1e-3 < p_heavy


def test_tail_estimator_calls_a_first_large_value_rare_not_impossible() -> None:
    est = tail("t")
    cols = bank_for(est)
    for x in np.abs(np.random.default_rng(1).normal(size=3000)):
        est.step(cols, ONE, np.array([x]), np.array([True]))
    scale = np.sqrt(cols["t_scale2"][0])
    p = [est.step(cols, ONE, np.array([k * scale]), np.array([False]))[0] for k in (8.0, 12.0, 40.0)]
    # never seen beyond ~4 scales: the prior's exponential tail decides, so 12 scales is
    # one in billions (not the 1e-300 a Gaussian prior gave) and a larger value still rarer
    assert 1e-12 < p[1] < 1e-6
    assert p[2] < p[1] < p[0]


def test_tail_estimator_survives_a_statistic_that_was_always_zero() -> None:
    est = tail("t")
    cols = bank_for(est)
    for _ in range(200):
        est.step(cols, ONE, np.zeros(1), np.array([True]))
    p = est.step(cols, ONE, np.array([1e-9]), np.array([True]))
    assert np.isfinite(p).all() and p[0] == 1.0  # below the scale floor: nothing unusual
    assert est.step(cols, ONE, np.array([np.nan]), np.array([True]))[0] == 1.0


class Feed:
    """Readings through one evidence component on one sensor, counted as the detector counts them."""

    def __init__(self, component) -> None:
        self.component, self.cols, self.n = component, bank_for(component), 0

    def range(self, value: float, mean: float) -> float:
        self.n += 1  # the range check is told the readings before this one
        return float(self.component.step(self.cols, ONE, np.array([value]), np.ones(1), np.array([mean]), np.array([self.n - 1]))[0])

    def sustained(self, u: float, learn: bool = True) -> float:
        self.n += 1
        return float(self.component.step(self.cols, ONE, np.array([u]), np.array([self.n]), np.array([learn]))[0])

    def pattern(self, value: float, learn: bool = True) -> float:
        self.n += 1
        return float(self.component.step(self.cols, ONE, np.array([value]), np.ones(1), np.zeros(1), np.array([self.n]),
                                         np.array([learn]))[0])


def test_range_novelty_flags_a_new_extreme_by_how_far_it_goes() -> None:
    feed = Feed(RangeNovelty(tolerance=0.05, halflife=0))
    cols = feed.cols
    gen = np.random.default_rng(1)
    for v in gen.uniform(0, 10, 999):
        feed.range(v, 5.0)
    lo, hi = cols["range_lo"][0], cols["range_hi"][0]
    inside = feed.range(5.0, 5.0)
    barely = feed.range(hi + 0.01 * (hi - lo), 5.0)
    hi = cols["range_hi"][0]
    beyond = feed.range(hi + 3.0, 5.0)
    assert inside == 1.0 and barely == 1.0  # within the tolerance of 5% of the width
    # 1001 readings before it: a new extreme is a 2-in-1001 event, and 3 scales beyond it exp(-3) of that
    assert np.isclose(beyond, 2.0 / 1001 * np.exp(-3.0))


def test_range_novelty_ignores_a_slow_trend_and_forgets_a_glitch() -> None:
    trend = Feed(RangeNovelty(tolerance=0.05, halflife=0))
    ps = [trend.range(0.01 * i + np.sin(i), 0.01 * i) for i in range(2000)]
    assert min(ps[100:]) == 1.0

    feed = Feed(RangeNovelty(tolerance=0.05, halflife=200))
    cols = feed.cols
    for i in range(2000):
        feed.range(20.0 + np.sin(i), 20.0)
    feed.range(1e6, 20.0)  # one glitch
    for i in range(2000, 7000):  # 25 half-lives
        feed.range(20.0 + np.sin(i), 20.0)
    assert cols["range_hi"][0] < 30.0  # the glitch's extreme relaxed back
    assert feed.range(60.0, 20.0) < 1e-3


def test_daily_profile_catches_a_value_normal_for_the_day_but_not_the_hour() -> None:
    prof = DailyProfile(bins=24, halflife_days=3.0, tail=tail("profile"))
    cols = bank_for(prof)
    gen = np.random.default_rng(2)
    hour = 3600.0

    def level(t: float) -> float:  # busy from 08:00 to 20:00 UTC, quiet at night
        return 100.0 if 8 <= (t % 86400) / hour < 20 else 10.0

    ts = np.arange(0, 20 * 86400, 600.0)
    ps = []
    for t in ts:
        v = level(t) + gen.normal(0, 2)
        ps.append(prof.step(cols, ONE, np.array([t]), np.array([v]), np.array([40.0]), np.array([600.0]), np.array([True]))[0])
    t = ts[-1] + 600.0 * ((3 * hour - ts[-1] % 86400) % 86400 / 600.0)  # next 03:00
    night_busy = prof.step(cols, ONE, np.array([t]), np.array([100.0]), np.array([40.0]), np.array([600.0]), np.array([False]))[0]
    night_quiet = prof.step(cols, ONE, np.array([t + 600]), np.array([11.0]), np.array([40.0]), np.array([600.0]), np.array([False]))[0]
    assert night_busy < 1e-6
    assert night_quiet > 0.05
    assert np.quantile(ps[3 * 144:], 0.999) > 1e-4  # normal days never look that unusual


def test_onset_filter_keeps_news_and_drops_repeats() -> None:
    onset = OnsetFilter(halflife=10, margin=DEFAULTS.onset_margin)
    cols = bank_for(onset)
    surprise = [0.1, 0.8, 0.8, 0.7, 0.9, 0.2] + [0.0] * 60 + [0.8]
    got = [onset.step(cols, ONE, np.array([s]))[0] for s in surprise]
    assert got[:6] == [0.1, 0.8, 0.0, 0.0, 0.9, 0.0]
    assert got[-1] == 0.8  # after the peak decayed the same surprise is news again
    assert OnsetFilter(halflife=0, margin=DEFAULTS.onset_margin).step(cols, ONE, np.array([0.3]))[0] == 0.3


def test_onset_margin_makes_a_build_up_one_onset() -> None:
    surprise = [0.4, 0.45, 0.48, 0.52, 0.65]
    slow = OnsetFilter(halflife=1e6, margin=0.1)
    cols = bank_for(slow)
    # the first reading opens the incident; the next one counts only when it is a decade rarer
    assert [slow.step(cols, ONE, np.array([s]))[0] for s in surprise] == [0.4, 0.0, 0.0, 0.52, 0.65]
    plain = OnsetFilter(halflife=1e6, margin=0.0)
    cols = bank_for(plain)
    assert [plain.step(cols, ONE, np.array([s]))[0] for s in surprise] == surprise




def test_sustained_residual_flags_a_run_that_larger_spikes_do_not_explain() -> None:
    feed = Feed(SustainedResidual(window=10, clip=6.0, tail=tail("sustain")))
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
    fresh = Feed(SustainedResidual(window=10, clip=DEFAULTS.calibration_clip, tail=tail("sustain")))
    ps = [fresh.sustained(np.nan if i == 0 else 50.0) for i in range(11)]
    # (then it is judged by the prior alone: a mean of 6 deviations, exp(-6 sqrt 2) = 2e-4)
    assert ps[:10] == [1.0] * 10 and ps[10] < 1e-3


def test_pattern_novelty_flags_a_new_shape_within_the_usual_range() -> None:
    novelty = PatternNovelty(windows=256, tail=tail("pattern"))
    feed = Feed(novelty)
    noise = np.random.default_rng(4).normal(scale=0.05, size=3192)
    for i in range(3000):  # a daily-like cycle of 96 readings
        feed.pattern(float(np.sin(2 * np.pi * i / 96.0) + noise[i]))
    same = [feed.pattern(float(np.sin(2 * np.pi * i / 96.0) + noise[i]), learn=False) for i in range(3000, 3096)]
    assert min(same) > 0.01
    # the same values in a new shape: a cycle three times as fast, never leaving [-1, 1]
    new = [feed.pattern(float(np.sin(2 * np.pi * i / 32.0) + noise[i]), learn=False) for i in range(3096, 3192)]
    assert min(new) < 1e-6
    # memory is bounded: 256 windows of 8 block means per sensor, whatever the history
    assert feed.cols["pattern_kept"].shape == (1, 256, PatternNovelty.LENGTH)


def test_pattern_novelty_never_matches_a_window_with_itself() -> None:
    feed = Feed(PatternNovelty(windows=64, tail=tail("pattern")))
    ps = [feed.pattern(float(i % 7 == 0)) for i in range(PatternNovelty.SPAN + 40)]
    # until a whole earlier window exists that does not overlap the current one, nothing is judged
    assert ps == [1.0] * len(ps)


def test_scores_map_probabilities_onto_decades() -> None:
    s = score_from_probability(np.array([1.0, 1e-3, 1e-5, 1e-12]))
    assert s.tolist() == [0.0, 0.3, 0.5, 1.0]
    assert not np.signbit(s[0])
