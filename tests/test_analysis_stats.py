"""analysis.stats on runs loaded from a real MLflow store, checked against numpy/scipy on the known arrays.

The store holds (epochs = 3):
- W=0.01: seeds 0-4 in both arms, BN = plain + 0.3 + noise (clearly better);
- W=0.1: seeds 0-3, independent random histories;
- W=1.0: BN seeds 0-4, plain seeds 0, 1, 2, 7 (unpaired: bn 3, 4; plain 7); plain seed 1 has a NaN
  final test accuracy;
- W=0.5: one seed per arm (no interval, no test);
- W=0.2: seeds 0-3 with identical BN and plain histories (all differences 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import load_runs
from analysis.scales import nearest_scale
from analysis.sequences import difference_cs
from analysis.stats import (
    arm_summary,
    final_summary,
    holm,
    interval_history,
    paired_comparison,
    seed_block,
    seeds_needed,
)
from tests.mlflow_fixtures import create_experiment, log_trial_run, make_store, trial_config

EPOCHS = 3
LAST = EPOCHS
METRICS = ("train_acc", "test_acc", "train_loss")
WIDTH = 0.05


def _hist(rng, base=None, shift=0.0):
    if base is None:
        return {m: rng.uniform(0.05, 0.6, EPOCHS + 1) for m in METRICS}
    return {m: base[m] + shift + rng.normal(0, 0.02, EPOCHS + 1) for m in METRICS}


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """{(w, bn, seed): history} logged into a fresh store; plus the loaded frame."""
    root = tmp_path_factory.mktemp("stats-store")
    uri, client = make_store(root)
    exp_id = create_experiment(client, "stats", root / "artifacts")
    rng = np.random.default_rng(42)
    hist: dict[tuple[float, bool, int], dict[str, np.ndarray]] = {}
    for seed in range(5):
        plain = _hist(rng)
        hist[(0.01, False, seed)] = plain
        hist[(0.01, True, seed)] = _hist(rng, plain, 0.3)
    for seed in range(4):
        hist[(0.1, True, seed)] = _hist(rng)
        hist[(0.1, False, seed)] = _hist(rng)
    for seed in range(5):
        hist[(1.0, True, seed)] = _hist(rng)
    for seed in (0, 1, 2, 7):
        hist[(1.0, False, seed)] = _hist(rng)
    hist[(1.0, False, 1)]["test_acc"][LAST] = np.nan
    hist[(0.5, True, 0)] = _hist(rng)
    hist[(0.5, False, 0)] = _hist(rng)
    for seed in range(4):
        same = _hist(rng)
        hist[(0.2, True, seed)] = same
        hist[(0.2, False, seed)] = {m: v.copy() for m, v in same.items()}
    for (w, bn, seed), h in hist.items():
        log_trial_run(client, exp_id, trial_config(w, bn, seed, epochs=EPOCHS), h)
    return hist, load_runs("stats", uri)


def arm_values(hist, w, bn, metric, epoch):
    """Values of one arm at one epoch, NaN dropped, in seed order."""
    vals = [h[metric][epoch] for (ww, b, s), h in sorted(hist.items()) if ww == w and b == bn]
    return np.array([v for v in vals if not np.isnan(v)])


def t_ci(values, confidence=0.95):
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    if np.std(values) == 0:  # scipy wants scale > 0; the interval of constant values is that value
        return float(np.mean(values)), float(np.mean(values))
    return sps.t.interval(confidence, n - 1, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(n))


def brute_seeds(sd, width):
    """Smallest n >= 2 with 2 t_{0.975,n-1} sd / sqrt(n) <= width, by counting up from 2."""
    if not np.isfinite(sd):
        return math.nan
    n = 2
    while 2 * sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) > width:
        n += 1
    return n


def holm_reference(pvalues):
    """Holm's step-down procedure written out: NaNs are not part of the family."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired(hist, w, metric):
    bn = {s: h[metric][LAST] for (ww, b, s), h in hist.items() if ww == w and b}
    plain = {s: h[metric][LAST] for (ww, b, s), h in hist.items() if ww == w and not b}
    seeds = sorted(s for s in set(bn) & set(plain) if not np.isnan(bn[s]) and not np.isnan(plain[s]))
    return np.array([bn[s] for s in seeds]), np.array([plain[s] for s in seeds])


def test_arm_summary_matches_numpy_scipy(known):
    hist, df = known
    summary = arm_summary(df)
    scales = sorted({w for w, _, _ in hist})
    assert len(summary) == len(scales) * 2 * len(METRICS) * (EPOCHS + 1)
    for row in summary.itertuples():
        vals = arm_values(hist, row.weight_scale, row.use_batchnorm, row.metric, row.epoch)
        n_runs = sum(1 for (w, b, _) in hist if w == row.weight_scale and b == row.use_batchnorm)
        assert row.n == len(vals) and row.n_runs == n_runs
        assert row.mean == pytest.approx(np.mean(vals), rel=1e-12)
        lo, hi = t_ci(vals)
        if len(vals) >= 2:
            assert row.std == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
            assert row.ci_low == pytest.approx(lo, rel=1e-12)
            assert row.ci_high == pytest.approx(hi, rel=1e-12)
            assert row.note == ""
        else:
            assert math.isnan(row.std) and math.isnan(row.ci_low) and math.isnan(row.ci_high)
            assert row.note == "n=1: no interval"


def test_nan_values_are_left_out_of_the_arm_statistics(known):
    _, df = known
    s = arm_summary(df).set_index(["weight_scale", "use_batchnorm", "metric", "epoch"])
    assert s.loc[(1.0, False, "test_acc", LAST), "n"] == 3
    assert s.loc[(1.0, False, "test_acc", LAST), "n_runs"] == 4
    assert s.loc[(1.0, False, "test_acc", 0), "n"] == 4


def test_paired_comparison_matches_numpy_scipy(known):
    hist, df = known
    comp = paired_comparison(df, width=WIDTH)
    scales = sorted({w for w, _, _ in hist})
    assert len(comp) == 2 * len(scales)
    assert set(comp["metric"]) == {"train_acc", "test_acc"}
    for metric in ("train_acc", "test_acc"):
        cm = comp[comp["metric"] == metric].set_index("weight_scale")
        assert sorted(cm.index) == scales
        p_t, p_w = [], []
        for w in scales:
            row = cm.loc[w]
            b, p = paired(hist, w, metric)
            d = b - p
            assert row["n_pairs"] == len(d)
            assert row["final_epoch"] == LAST
            bn_all = arm_values(hist, w, True, metric, LAST)
            plain_all = arm_values(hist, w, False, metric, LAST)
            assert (row["n_bn"], row["n_plain"]) == (len(bn_all), len(plain_all))
            assert row["mean_bn"] == pytest.approx(bn_all.mean(), rel=1e-12)
            assert row["mean_plain"] == pytest.approx(plain_all.mean(), rel=1e-12)
            assert row["mean_diff"] == pytest.approx(d.mean(), rel=1e-12, abs=1e-15)
            if len(d) >= 2:
                lo, hi = t_ci(d)
                assert row["sd_diff"] == pytest.approx(np.std(d, ddof=1), rel=1e-12, abs=1e-15)
                assert row["ci_low"] == pytest.approx(lo, rel=1e-12, abs=1e-15)
                assert row["ci_high"] == pytest.approx(hi, rel=1e-12, abs=1e-15)
            if len(d) >= 2 and np.any(d != 0):
                exp_t = sps.ttest_rel(b, p).pvalue
                exp_w = sps.wilcoxon(d).pvalue
                assert row["p_ttest"] == pytest.approx(exp_t, rel=1e-10)
                assert row["p_wilcoxon"] == pytest.approx(exp_w, rel=1e-10)
            p_t.append(row["p_ttest"])
            p_w.append(row["p_wilcoxon"])
            for col, values in (("seeds_needed_bn", bn_all), ("seeds_needed_plain", plain_all),
                                ("seeds_needed_diff", d)):
                expected = brute_seeds(np.std(values, ddof=1) if len(values) > 1 else math.nan, WIDTH)
                assert row[col] == expected or (math.isnan(expected) and math.isnan(row[col])), col
        exp_holm_t = holm_reference(p_t)
        exp_holm_w = holm_reference(p_w)
        np.testing.assert_allclose(cm.loc[scales, "p_ttest_holm"].to_numpy(), exp_holm_t, rtol=1e-12)
        np.testing.assert_allclose(cm.loc[scales, "p_wilcoxon_holm"].to_numpy(), exp_holm_w, rtol=1e-12)
        expected_sig = [not math.isnan(h) and h < 0.05 for h in exp_holm_t]
        assert cm.loc[scales, "significant"].tolist() == expected_sig
    # the data make both outcomes occur, so the flag is really tested
    assert comp["significant"].any() and not comp["significant"].all()
    assert comp.set_index(["weight_scale", "metric"]).loc[(0.01, "train_acc"), "significant"]


def test_unpaired_seeds_and_nan_finals_are_dropped_and_reported(known):
    _, df = known
    comp = paired_comparison(df).set_index(["weight_scale", "metric"])
    train = comp.loc[(1.0, "train_acc")]
    test = comp.loc[(1.0, "test_acc")]
    assert train["unpaired_seeds"] == "bn only: 3,4; plain only: 7"
    assert train["n_pairs"] == 3 and (train["n_bn"], train["n_plain"]) == (5, 4)
    assert "unpaired seeds dropped" in train["note"]
    assert test["n_pairs"] == 2 and test["n_plain"] == 3
    assert "NaN final value dropped: plain 1" in test["note"]
    assert comp.loc[(0.01, "train_acc"), "unpaired_seeds"] == ""


def test_single_seed_gives_no_interval_and_says_so(known):
    _, df = known
    comp = paired_comparison(df).set_index(["weight_scale", "metric"])
    row = comp.loc[(0.5, "train_acc")]
    assert row["n_pairs"] == 1
    for col in ("sd_diff", "ci_low", "ci_high", "p_ttest", "p_wilcoxon", "p_ttest_holm", "seeds_needed_diff",
                "sd_bn", "seeds_needed_bn"):
        assert math.isnan(row[col]), col
    assert "fewer than 2 pairs: no interval, no test" in row["note"]
    assert not row["significant"]
    final = final_summary(df).set_index(["weight_scale", "use_batchnorm", "metric"])
    assert final.loc[(0.5, True, "train_acc"), "note"] == "n=1: no interval"
    assert math.isnan(final.loc[(0.5, True, "train_acc"), "ci_low"])


def test_all_zero_differences_give_p_one_with_a_note(known):
    _, df = known
    comp = paired_comparison(df).set_index(["weight_scale", "metric"])
    row = comp.loc[(0.2, "test_acc")]
    assert row["mean_diff"] == 0 and row["sd_diff"] == 0
    assert row["ci_low"] == 0 and row["ci_high"] == 0
    assert row["p_wilcoxon"] == 1.0 and row["p_ttest"] == 1.0
    assert "all differences are 0: p-values set to 1" in row["note"]
    assert row["seeds_needed_diff"] == 2


def test_final_summary_matches_numpy_scipy(known):
    hist, df = known
    final = final_summary(df, width=WIDTH)
    for row in final.itertuples():
        vals = arm_values(hist, row.weight_scale, row.use_batchnorm, row.metric, LAST)
        assert row.n == len(vals)
        assert row.mean == pytest.approx(vals.mean(), rel=1e-12)
        if len(vals) >= 2:
            lo, hi = t_ci(vals)
            assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), rel=1e-12)
            assert row.seeds_needed == brute_seeds(np.std(vals, ddof=1), WIDTH)


@pytest.mark.parametrize("sd", [0.001, 0.01, 0.0123, 0.05, 0.2, 0.31])
@pytest.mark.parametrize("width", [0.02, 0.05, 0.1])
def test_seeds_needed_is_the_smallest_n_that_fits(sd, width):
    n = seeds_needed(sd, width)
    assert n == brute_seeds(sd, width)
    # and it is the smallest: one fewer seed would not do (unless n is the minimum of 2)
    if n > 2:
        assert 2 * sps.t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1) > width


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.0, 0.02) == 2
    assert math.isnan(seeds_needed(float("nan"), 0.02))
    with pytest.raises(ValueError):
        seeds_needed(0.1, 0.0)


def test_holm_known_example_and_random_families():
    # textbook: p = .01 .04 .03 .005 -> sorted .005*4, .01*3, .03*2, .04*1 (monotone) = .02 .03 .06 .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        p[rng.uniform(size=p.size) < 0.2] = np.nan
        np.testing.assert_allclose(holm(p), holm_reference(list(p)), rtol=1e-12)


def test_nearest_scale_is_nearest_in_log_space():
    scales = np.logspace(0, -4, num=16)
    # the book's scales 0.0074 and 0.0136 are equally far from 0.01 in log space: the larger is used
    assert nearest_scale(scales, 0.01) == pytest.approx(0.013593563908785)
    assert nearest_scale([0.001, 0.1], 0.01) == 0.1
    assert nearest_scale([0.004, 0.03], 0.01) == 0.004  # log distance 0.40 vs 0.48


def test_confidence_sequence_columns_read_the_contiguous_seed_block(known):
    """cs_* are the betting CS at alpha / (number of scales) over the seeds from the smallest on, in order, while
    both arms have a run: at W=1.0 plain has seeds 0, 1, 2, 7, so seeds 3-4 (bn only) and 7 (plain only) are out,
    and the NaN test accuracy of plain seed 1 is skipped inside the block."""
    hist, df = known
    comp = paired_comparison(df, alpha=0.05).set_index(["weight_scale", "metric"])
    n_scales = len({w for w, _, _ in hist})
    for (w, metric), row in comp.iterrows():
        seeds = [0, 1, 2] if w == 1.0 else sorted({s for (ww, _, s) in hist if ww == w})
        d = np.array([hist[(w, True, s)][metric][LAST] - hist[(w, False, s)][metric][LAST] for s in seeds])
        d = d[~np.isnan(d)]
        assert row["cs_n"] == len(d)
        seq = difference_cs(d, 0.05 / n_scales)
        assert row["cs_low"] == seq["cs_low"][-1] and row["cs_high"] == seq["cs_high"][-1]
        assert row["p_anytime"] == pytest.approx(min(1.0, n_scales * seq["p_anytime"][-1]), rel=1e-12)
    assert comp.loc[(1.0, "test_acc"), "cs_n"] == 2 and comp.loc[(1.0, "train_acc"), "cs_n"] == 3
    # the CS is wider than the t interval at the same n (the price of being valid under any stopping rule): at
    # W=0.01 (BN = plain + 0.3) the t interval excludes 0 with 5 seeds, the CS at 0.05 / 5 does not yet
    clear = comp.loc[(0.01, "train_acc")]
    assert clear["ci_low"] > 0 and clear["cs_low"] < 0 < clear["cs_high"] and clear["p_anytime"] > 0.05
    assert clear["cs_low"] < clear["ci_low"] and clear["cs_high"] > clear["ci_high"]


def _one_cell(n_seeds, gain, drop=()):
    """A frame of one weight scale, BN = plain + gain at the final epoch; (seed, bn) pairs in ``drop`` missing."""
    rng = np.random.default_rng(7)
    rows = []
    for s in range(n_seeds):
        plain = rng.uniform(0.3, 0.5)
        for bn in (True, False):
            if (s, bn) not in drop:
                rows.append({"run_id": f"{bn}{s}", "weight_scale": 0.1, "use_batchnorm": bn, "seed": s, "epoch": 1,
                             "train_acc": plain + gain * bn + rng.normal(0, 0.01), "test_acc": plain})
    return pd.DataFrame(rows)


def test_enough_seeds_make_the_confidence_sequence_exclude_zero():
    row = paired_comparison(_one_cell(30, 0.3)).set_index("metric").loc["train_acc"]
    assert row["cs_n"] == 30 and row["cs_low"] > 0 and row["p_anytime"] < 0.05
    assert row["cs_low"] < row["mean_diff"] < row["cs_high"]


def test_a_seed_missing_in_one_arm_holds_back_the_later_pairs_and_the_note_says_so():
    row = paired_comparison(_one_cell(30, 0.3, drop={(2, False)})).set_index("metric").loc["train_acc"]
    assert row["n_pairs"] == 29 and row["cs_n"] == 2
    assert "confidence sequence over seeds 0-1 (2 of 29 pairs" in row["note"]
    assert row["ci_low"] > 0 and row["cs_low"] < 0  # the 27 pairs after the gap are not read


def test_seed_block_starts_at_the_smallest_seed_and_stops_at_the_first_gap():
    assert seed_block([3, 4, 5, 7], [3, 4, 5, 6, 7]) == [3, 4, 5]
    assert seed_block([0, 1, 2], [1, 2]) == []  # seed 0 waits for its plain run: nothing after it is read
    assert seed_block([], []) == []


def test_interval_history_ends_at_the_comparison_and_the_t_interval_of_the_first_n(known):
    hist, df = known
    history = interval_history(df, alpha=0.05)
    comp = paired_comparison(df, alpha=0.05).set_index(["weight_scale", "metric"])
    for (w, metric), cell in history.groupby(["weight_scale", "metric"]):
        row = comp.loc[(w, metric)]
        assert cell["n"].tolist() == list(range(1, int(row["cs_n"]) + 1))
        last = cell.iloc[-1]
        assert (last["cs_low"], last["cs_high"]) == (row["cs_low"], row["cs_high"])
        assert (cell["cs_high"].diff().dropna() <= 0).all() and (cell["cs_low"].diff().dropna() >= 0).all()
    cell = history[(history["weight_scale"] == 0.01) & (history["metric"] == "train_acc")].set_index("n")
    d = np.array([hist[(0.01, True, s)]["train_acc"][LAST] - hist[(0.01, False, s)]["train_acc"][LAST]
                  for s in range(5)])
    for n in (2, 3, 4, 5):
        lo, hi = t_ci(d[:n])
        assert cell.loc[n, "ci_low"] == pytest.approx(lo) and cell.loc[n, "ci_high"] == pytest.approx(hi)
    assert math.isnan(cell.loc[1, "ci_low"])
    assert (1.0, "train_acc") in set(zip(history["weight_scale"], history["metric"], strict=True))
    zero = history[(history["weight_scale"] == 0.2) & (history["metric"] == "test_acc")].set_index("n")
    assert zero.loc[4, "ci_low"] == 0 == zero.loc[4, "ci_high"]  # all differences 0, as in paired_comparison
