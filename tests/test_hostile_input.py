"""No reading can silence a sensor: absurd but finite values, values near the float
range and hostile timestamps leave the sensor able to flag the next real anomaly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from streamrnn.core import Detector
from streamrnn.lifecycle.artifacts import default_model_path, load_model

BAD_AT = 400


@pytest.fixture(scope="module")
def model_file():
    return load_model(default_model_path())


def noisy(n: int, seed: int = 0) -> np.ndarray:
    return 10.0 + np.random.default_rng(seed).normal(0.0, 1.0, n)


def finite_state(det: Detector) -> bool:
    """Every sensor's normaliser and network state is finite, and so is its pending
    forecast once it has one (a new or reset sensor's is NaN)."""
    rows = det.bank.rows[: max(det.active_sensors, 1)]
    seen = rows["count"] > 0
    return (all(np.isfinite(rows[c]).all() for c in ("norm_mean", "norm_var", "h"))
            and all(np.isfinite(rows[c][seen]).all() for c in ("fc_mean", "fc_std", "fc_scale")))


def run(model_file, v: np.ndarray):
    det = Detector(model_file.model, version=model_file.version)
    return det, det.process(["s"] * len(v), 60.0 * np.arange(len(v)), v)


@pytest.mark.parametrize("bad", [1e6, 1e30, 1e300, -1e300, 1.7e308])
@pytest.mark.parametrize("after", [50, 600])
def test_one_absurd_value_does_not_blind_the_sensor(model_file, bad: float, after: int) -> None:
    n = BAD_AT + after + 20
    v = noisy(n)
    spike = BAD_AT + after
    v[spike] += 10.0  # ten one-step deviations
    _, clean = run(model_file, v)
    v[BAD_AT] = bad
    det, r = run(model_file, v)
    assert finite_state(det)
    assert r.score[BAD_AT] >= 0.5  # the absurd value itself is flagged
    assert r.surprise[spike] >= clean.surprise[spike] - 0.15
    assert any(e.event == "open" and e.ts == 60.0 * spike for e in r.events)
    # after the glitch and before the spike the sensor looks as it did before it
    quiet = np.r_[BAD_AT + 5: spike]
    assert np.quantile(r.score[quiet], 0.99) < 0.3


def test_a_lasting_level_shift_is_learnt_not_ignored(model_file) -> None:
    v = noisy(1500)
    v[BAD_AT:] += 1e6  # the second reading far off makes it a change, not a glitch
    det, r = run(model_file, v)
    assert r.score[BAD_AT] >= 0.5
    assert det.bank.rows[0]["norm_mean"] > 5e5  # the normaliser follows the new level
    assert np.quantile(r.score[-200:], 0.99) < 0.5


def test_values_that_overflow_the_state_reset_the_sensor_and_it_scores_again(model_file) -> None:
    v = noisy(900)
    v[BAD_AT:BAD_AT + 3] = [1.7e308, -1.7e308, 1.7e308]  # a run of them: learnt, and the variance overflows
    v[800] += 10.0
    det = Detector(model_file.model, version=model_file.version)
    r = det.process(["s"] * len(v), 60.0 * np.arange(len(v)), v, np.full(len(v), 3, dtype=np.int32))
    assert det.resets_total >= 1
    assert det.bank.rows[0]["owner"] == 3  # still checkpointed with its partition
    assert finite_state(det)
    assert np.isfinite(r.score).all() and ((r.score >= 0) & (r.score <= 1)).all()
    assert any(e.event == "open" and e.ts == 60.0 * 800 for e in r.events)


def test_other_sensors_are_untouched_by_one_sensors_glitch(model_file) -> None:
    n = 300
    clean = Detector(model_file.model, version=model_file.version)
    mixed = Detector(model_file.model, version=model_file.version)
    ts = 60.0 * np.arange(n)
    a, b = noisy(n, 1), noisy(n, 2)
    b_bad = b.copy()
    b_bad[100] = 1e300
    ids = ["a"] * n + ["b"] * n
    r0 = clean.process(ids, np.r_[ts, ts], np.r_[a, b])
    r1 = mixed.process(ids, np.r_[ts, ts], np.r_[a, b_bad])
    np.testing.assert_array_equal(r0.score[:n], r1.score[:n])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-1e3, 1e3)), min_size=1, max_size=120),
       st.lists(st.floats(0.001, 1e7), min_size=1, max_size=120))
def test_any_finite_values_and_gaps_keep_the_state_finite_and_scores_in_range(model_file, values, gaps) -> None:
    n = min(len(values), len(gaps))
    det = Detector(model_file.model, version=model_file.version)
    ts = 1.7e9 + np.cumsum(gaps[:n])
    r = det.process(["s"] * n, ts, np.asarray(values[:n]))
    assert finite_state(det)
    assert np.isfinite(r.score).all() and ((r.score >= 0) & (r.score <= 1)).all()
    assert np.isfinite(r.surprise).all()
