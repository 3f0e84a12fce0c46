"""analysis.sequences: anytime-valid confidence sequences (betting and empirical Bernstein) and anytime p-values.

The simulations use fixed numpy seeds, so every number here is reproducible; the bounds (alpha + 3 binomial
standard errors) leave room for the simulation's noise, not for a wrong method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.sequences import anytime_p_value, betting_cs, difference_cs, empirical_bernstein_cs

ALPHA = 0.05
SEQUENCES = 2000
HORIZON = 50
GRID_STEP = 2.0 / 1000  # the default grid over [-1, 1]


def _limit(alpha: float, count: int) -> float:
    """alpha + 3 binomial standard errors: the most a valid procedure's simulated error rate should reach."""
    return alpha + 3.0 * math.sqrt(alpha * (1 - alpha) / count)


def _draw(kind: str, count: int = SEQUENCES, n: int = HORIZON) -> tuple[np.ndarray, float]:
    """``count`` sequences of ``n`` differences in [-1, 1] and their true mean."""
    rng = np.random.default_rng({"beta": 11, "two_point": 12, "null": 13}[kind])
    if kind == "beta":  # 2 * Beta(2, 5) - 1: skewed, mean 2 * 2/7 - 1
        return 2.0 * rng.beta(2.0, 5.0, (count, n)) - 1.0, 2.0 * 2.0 / 7.0 - 1.0
    if kind == "two_point":  # -1 w.p. 0.7, +1 w.p. 0.3: the largest variance a mean of -0.4 allows
        return np.where(rng.random((count, n)) < 0.3, 1.0, -1.0), -0.4
    return 2.0 * rng.beta(2.0, 2.0, (count, n)) - 1.0, 0.0  # symmetric, mean 0


def _t_ever_misses(xs: np.ndarray, mu: float, alpha: float) -> np.ndarray:
    """Per sequence: does the fixed-n t interval, recomputed at every n = 2..N, miss ``mu`` at some n?"""
    n = np.arange(1, xs.shape[1] + 1, dtype=float)
    mean = np.cumsum(xs, axis=1) / n
    var = (np.cumsum(xs**2, axis=1) - n * mean**2) / np.maximum(n - 1, 1)
    half = stats.t.ppf(1 - alpha / 2, np.maximum(n - 1, 1)) * np.sqrt(np.maximum(var, 0.0) / n)
    miss = (mean - half > mu + 1e-12) | (mean + half < mu - 1e-12)
    return miss[:, 1:].any(axis=1)


@pytest.fixture(scope="module", params=["beta", "two_point"])
def peeking(request):
    """The betting and EB sequences of 2000 simulated sequences of 50 differences, stacked (sequence, n)."""
    xs, mu = _draw(request.param)
    bet = [betting_cs(x, alpha=ALPHA) for x in xs]
    eb = [empirical_bernstein_cs(x, alpha=ALPHA) for x in xs]
    stack = {k: np.stack([c[k] for c in bet]) for k in ("mean", "low", "high")}
    stack.update({f"eb_{k}": np.stack([c[k] for c in eb]) for k in ("low", "high")})
    return request.param, xs, mu, stack


def test_coverage_survives_peeking_where_the_t_interval_does_not(peeking):
    kind, xs, mu, cs = peeking
    ever_missed = ((cs["low"] > mu) | (cs["high"] < mu)).any(axis=1).mean()
    eb_ever_missed = ((cs["eb_low"] > mu) | (cs["eb_high"] < mu)).any(axis=1).mean()
    t_ever_missed = _t_ever_misses(xs, mu, ALPHA).mean()
    assert ever_missed <= _limit(ALPHA, SEQUENCES), (kind, ever_missed)
    assert eb_ever_missed <= _limit(ALPHA, SEQUENCES), (kind, eb_ever_missed)
    assert t_ever_missed > 2 * ALPHA, (kind, t_ever_missed)  # the point of a CS: peeking breaks the t interval


def test_sequence_is_nested_bounded_and_holds_the_sample_mean(peeking):
    kind, xs, _, cs = peeking
    width = cs["high"] - cs["low"]
    assert (np.diff(width, axis=1) <= 1e-12).all()  # running intersection: never widens
    assert (np.diff(cs["low"], axis=1) >= -1e-12).all() and (np.diff(cs["high"], axis=1) <= 1e-12).all()
    assert (cs["low"] >= -1.0).all() and (cs["high"] <= 1.0).all() and (cs["low"] <= cs["high"]).all()
    np.testing.assert_allclose(cs["mean"], np.cumsum(xs, axis=1) / np.arange(1, HORIZON + 1))
    inside = (cs["low"] <= cs["mean"]) & (cs["mean"] <= cs["high"])
    # Not a theorem (the bets weigh early observations more than late ones, and a running intersection keeps what
    # early data ruled out), but it holds nearly always: here at >= 99.5% of the (sequence, n) pairs of either kind.
    assert inside.mean() >= 0.99 and inside[:, :10].all(), (kind, inside.mean())
    assert (width[:, 0] == 2.0).all()  # one observation rules nothing out
    assert width[:, -1].mean() < 1.2  # ... but 50 do


def test_width_shrinks_like_sqrt_log_n_over_n():
    x = np.clip(np.random.default_rng(5).normal(0.1, 0.3, 400), -1.0, 1.0)
    cs = betting_cs(x, alpha=ALPHA)
    width = cs["high"] - cs["low"]
    assert width[399] < width[24] / 2.5
    assert width[399] > 2 * stats.norm.ppf(1 - ALPHA / 2) * x.std() / math.sqrt(400)  # wider than a z interval
    again = betting_cs(x, alpha=ALPHA)
    assert all(np.array_equal(cs[k], again[k]) for k in cs)  # deterministic


def test_units_follow_low_and_high():
    x = np.random.default_rng(6).beta(3.0, 2.0, 60)  # in [0, 1]
    unit = betting_cs(x, low=0.0, high=1.0)
    scaled = betting_cs(10.0 * x, low=0.0, high=10.0)
    shifted = betting_cs(2.0 * x - 1.0)
    np.testing.assert_allclose(scaled["low"], 10.0 * unit["low"], atol=1e-9)
    np.testing.assert_allclose(scaled["high"], 10.0 * unit["high"], atol=1e-9)
    np.testing.assert_allclose(shifted["low"], 2.0 * unit["low"] - 1.0, atol=1e-9)
    assert (scaled["low"] >= 0).all() and (scaled["high"] <= 10).all() and scaled["high"][-1] - scaled["low"][-1] < 5
    np.testing.assert_array_equal(unit["n"], np.arange(1, 61))


def test_anytime_p_detects_a_clear_effect():
    x = 2.0 * np.random.default_rng(7).beta(13.0, 7.0, HORIZON) - 1.0  # mean 0.3
    p = anytime_p_value(x, null=0.0)
    assert p.shape == (HORIZON,) and (np.diff(p) <= 0).all() and (p <= 1).all() and p[0] == 1.0
    assert p.min() <= ALPHA and p[-1] < 0.01
    assert anytime_p_value(x, null=0.3)[-1] > ALPHA


@pytest.mark.parametrize("kind", ["null", "beta", "two_point"])
def test_anytime_p_rejects_a_true_null_rarely_however_often_read(kind):
    xs, mu = _draw(kind)
    rejected = np.array([anytime_p_value(x, null=mu, alpha=ALPHA)[-1] <= ALPHA for x in xs])
    assert rejected.mean() <= _limit(ALPHA, SEQUENCES), (kind, rejected.mean())
    p_half = np.array([anytime_p_value(x, null=mu, alpha=ALPHA)[-1] for x in xs[:500]])
    assert (p_half <= 0.5).mean() <= _limit(0.5, 500)  # valid at other levels too


@pytest.mark.parametrize("grid", [1000, 999])
def test_p_at_most_alpha_iff_zero_is_outside_the_sequence(grid):
    """null outside [low, high] => p <= alpha; p <= alpha => null not inside (low, high) when null is a grid point
    (grid 1000 over [-1, 1]), else not more than one grid step inside (grid 999)."""
    rng = np.random.default_rng(8)
    step = 0.0 if grid % 2 == 0 else 2.0 / grid
    outcomes = set()
    for _ in range(300):
        x = 2.0 * rng.beta(2.3, 2.0, HORIZON) - 1.0  # mean ~0.07: some sequences exclude 0, most do not
        cs = betting_cs(x, alpha=ALPHA, grid=grid)
        p = anytime_p_value(x, null=0.0, alpha=ALPHA)
        out = (cs["low"] > 0) | (cs["high"] < 0)
        assert (p[out] <= ALPHA).all()
        rejected = p <= ALPHA
        assert ((cs["low"][rejected] >= -step) | (cs["high"][rejected] <= step)).all()
        outcomes.update(zip(out.tolist(), rejected.tolist(), strict=True))
    assert {(True, True), (False, False)} <= outcomes  # both sides were exercised


def test_difference_cs_is_the_betting_sequence_over_minus_one_one():
    d = np.random.default_rng(9).normal(0.6, 0.02, 30)
    res = difference_cs(d, alpha=0.01)
    cs = betting_cs(d, alpha=0.01, low=-1.0, high=1.0)
    assert list(res) == ["n", "mean_diff", "cs_low", "cs_high", "p_anytime"]
    assert all(len(v) == 30 for v in res.values())
    np.testing.assert_array_equal(res["cs_low"], cs["low"])
    np.testing.assert_array_equal(res["cs_high"], cs["high"])
    np.testing.assert_allclose(res["mean_diff"], np.cumsum(d) / np.arange(1, 31))
    np.testing.assert_array_equal(res["p_anytime"], anytime_p_value(d, null=0.0, alpha=0.01))
    assert res["cs_low"][-1] > 0 and res["p_anytime"][-1] <= 0.01  # a steady 0.6 gain is detected in 30 seeds


def test_betting_and_empirical_bernstein_agree_and_betting_is_narrower_for_small_variance():
    rng = np.random.default_rng(10)
    bet_w, eb_w = [], []
    for _ in range(20):
        x = np.clip(rng.normal(0.1, 0.02, 100), -1.0, 1.0)
        bet, eb = betting_cs(x), empirical_bernstein_cs(x)
        bet_w.append(bet["high"] - bet["low"])
        eb_w.append(eb["high"] - eb["low"])
        assert (eb["low"] <= 0.1).all() and (eb["high"] >= 0.1).all()
    bet_w, eb_w = np.array(bet_w), np.array(eb_w)
    ratio = eb_w[:, 9:] / bet_w[:, 9:]
    assert (ratio > 0.1).all() and (ratio < 10).all()  # the same order of magnitude from n = 10 on
    assert bet_w.mean(axis=0)[9:].max() < 1.0 and eb_w.mean(axis=0)[-1] < 0.5
    assert (bet_w.mean(axis=0) <= eb_w.mean(axis=0) + GRID_STEP).all()
    assert bet_w.mean() < eb_w.mean()


@pytest.mark.parametrize("fn", [betting_cs, empirical_bernstein_cs, anytime_p_value])
def test_values_outside_the_bounds_are_named(fn):
    with pytest.raises(ValueError, match=r"1\.5"):
        fn([0.1, 1.5, 0.2])
    with pytest.raises(ValueError, match=r"-3\.0"):
        fn([-3.0], low=-1.0, high=1.0)
    with pytest.raises(ValueError, match="nan"):
        fn([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"0\.5"):
        fn([0.5], low=0.0, high=0.25)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_refused(alpha):
    for call in (lambda: betting_cs([0.1], alpha=alpha), lambda: empirical_bernstein_cs([0.1], alpha=alpha),
                 lambda: anytime_p_value([0.1], alpha=alpha), lambda: difference_cs([0.1], alpha)):
        with pytest.raises(ValueError, match="alpha"):
            call()


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="null"):
        anytime_p_value([0.1], null=2.0)
    with pytest.raises(ValueError, match="grid"):
        betting_cs([0.1], grid=1)
    with pytest.raises(ValueError, match="low < high"):
        betting_cs([0.1], low=1.0, high=-1.0)


def test_empty_input_gives_empty_arrays():
    for res in (betting_cs([]), empirical_bernstein_cs([]), difference_cs([], 0.05)):
        assert res and all(isinstance(v, np.ndarray) and v.shape == (0,) for v in res.values())
    assert list(difference_cs([], 0.05)) == ["n", "mean_diff", "cs_low", "cs_high", "p_anytime"]
    assert anytime_p_value([]).shape == (0,)
