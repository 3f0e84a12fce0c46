"""The analysis of a store with two axes beside the weight scale (lr, optimizer): a column per axis, figures per
combination, Holm's family and the confidence sequences' Bonferroni split over every compared cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.facets import axes_of
from analysis.sequences import difference_cs
from analysis.stats import holm
from tests.mlflow_fixtures import create_experiment, log_trial_run, make_store, synthetic_history, trial_config

LRS, OPTIMIZERS, SCALES, SEEDS = (0.01, 0.1), ("sgd", "adam"), (0.1, 0.01), range(4)
EPOCHS = 3


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("facets")
    uri, client = make_store(root)
    exp = create_experiment(client, "facets", root / "artifacts")
    rng = np.random.default_rng(11)
    for lr in LRS:
        for opt in OPTIMIZERS:
            for w in SCALES:
                for seed in SEEDS:
                    for bn in (True, False):
                        cfg = trial_config(w, bn, seed, epochs=EPOCHS, lr=lr, optimizer=opt)
                        log_trial_run(client, exp, cfg, synthetic_history(cfg, rng))
    out = root / "out"
    assert main(["--experiment", "facets", "--tracking-uri", uri, "--out", str(out)]) == 0
    return uri, client, exp, out


def test_the_comparison_has_a_column_per_axis_and_one_family_for_all_cells(analysed):
    _, _, _, out = analysed
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns[:3]) == ["lr", "optimizer", "weight_scale"]
    assert len(comparison) == len(LRS) * len(OPTIMIZERS) * len(SCALES) * 2  # cells x metrics
    for _, cm in comparison.groupby("metric"):
        assert len(cm) == 8
        np.testing.assert_allclose(cm["p_ttest_holm"], holm(cm["p_ttest"].to_numpy()), rtol=1e-12)
    summary = pd.read_csv(out / "summary.csv")
    assert set(zip(summary["lr"], summary["optimizer"], strict=True)) == {(a, b) for a in LRS for b in OPTIMIZERS}


def test_each_confidence_sequence_is_simultaneous_over_every_cell(analysed):
    uri, _, _, out = analysed
    from analysis import load_runs

    df = load_runs("facets", uri)
    assert axes_of(df) == ["lr", "optimizer"]
    comparison = pd.read_csv(out / "comparison.csv")
    row = comparison[(comparison["lr"] == 0.1) & (comparison["optimizer"] == "adam") & (comparison["weight_scale"] ==
                     0.01) & (comparison["metric"] == "test_acc")].iloc[0]
    cell = df[(df["lr"] == 0.1) & (df["optimizer"] == "adam") & (df["weight_scale"] == 0.01)
              & (df["epoch"] == EPOCHS)].set_index(["use_batchnorm", "seed"])["test_acc"]
    d = np.array([cell[(True, s)] - cell[(False, s)] for s in SEEDS])
    seq = difference_cs(d, 0.05 / 8)
    assert (row["cs_low"], row["cs_high"]) == pytest.approx((seq["cs_low"][-1], seq["cs_high"][-1]))


def test_figures_per_combination_and_a_report_that_names_the_axes(analysed):
    _, client, exp, out = analysed
    for lr in ("0.01", "0.1"):
        for opt in OPTIMIZERS:
            for kind in ("grid", "curves", "final_accuracy", "difference"):
                assert (out / f"{kind}_lr-{lr}_optimizer-{opt}.png").exists(), (kind, lr, opt)
    assert not (out / "grid.png").exists()
    report = (out / "report.md").read_text()
    assert "Axes beside the weight scale, each combination analysed apart (lr: 0.01, 0.1; optimizer: adam, sgd)" \
        in report
    assert "| lr | optimizer | W | pairs |" in report
    assert "**lr=0.1, optimizer=adam**: Across 2 weight scales" in report
    assert "### Train accuracy per weight scale" in report and " \u2014 lr=0.1, optimizer=sgd" in report
    assert "(grid_lr-0.1_optimizer-sgd.png)" in report
    # the analysis run's metrics name the combination
    [run] = [r for r in client.search_runs([exp]) if r.data.tags.get("run_kind") == "analysis"]
    assert "test_acc/lr-0.1_optimizer-adam/W0.01/cs_low" in run.data.metrics


def test_compare_pairs_two_values_of_any_axis_by_seed(analysed, tmp_path):
    """--compare optimizer=sgd,adam: sgd - adam per seed, all else equal; BN/plain become an axis of their own."""
    uri, _, _, _ = analysed
    out = tmp_path / "cmp"
    assert main(["--experiment", "facets", "--tracking-uri", uri, "--out", str(out), "--no-log",
                 "--compare", "optimizer=sgd,adam"]) == 0
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.columns[:5]) == ["arm_a", "arm_b", "batchnorm", "lr", "weight_scale"]
    assert set(comparison["arm_a"]) == {"optimizer=sgd"} and set(comparison["arm_b"]) == {"optimizer=adam"}
    assert "mean_a" in comparison and "mean_bn" not in comparison
    assert len(comparison) == 2 * len(LRS) * len(SCALES) * 2  # batchnorm x lr x scales x metrics
    for _, cm in comparison.groupby("metric"):
        np.testing.assert_allclose(cm["p_ttest_holm"], holm(cm["p_ttest"].to_numpy()), rtol=1e-12)

    from analysis import load_runs

    df = load_runs("facets", uri)
    row = comparison[(comparison["batchnorm"]) & (comparison["lr"] == 0.1) & (comparison["weight_scale"] == 0.1)
                     & (comparison["metric"] == "train_acc")].iloc[0]
    cell = df[df["use_batchnorm"] & (df["lr"] == 0.1) & (df["weight_scale"] == 0.1)
              & (df["epoch"] == EPOCHS)].set_index(["optimizer", "seed"])["train_acc"]
    d = np.array([cell[("sgd", s)] - cell[("adam", s)] for s in SEEDS])
    assert row["mean_diff"] == pytest.approx(d.mean()) and row["n_pairs"] == len(SEEDS)
    report = (out / "report.md").read_text()
    assert ("| batchnorm | lr | W | pairs | sgd mean \u00b1 sd (n) | adam mean \u00b1 sd (n) | sgd \u2212 adam "
            "[95% CI]") in report
    assert "2 arms (optimizer=sgd, optimizer=adam)" in report
    assert "**batchnorm=True, lr=0.01**: Across 2 weight scales" in report
    assert (out / "difference_batchnorm-True_lr-0.1.png").exists()


@pytest.mark.parametrize(("compare", "message"), [
    ("depth=1,2", "--compare 'depth=1,2' names no axis (give --compare AXIS=a,b with AXIS one of train_size"),
    ("optimizer=sgd", "--compare 'optimizer=sgd' needs two different values"),
    ("optimizer=sgd,sgd", "needs two different values"),
    ("optimizer=sgd,rmsprop",
     "--compare optimizer=sgd,rmsprop: no run has optimizer=rmsprop (the runs have adam, sgd)"),
    ("dropout=0,0.5", "no run has dropout=0.5 (the runs have 0)"),
])
def test_a_bad_compare_is_one_line_and_writes_nothing(analysed, tmp_path, capsys, compare, message):
    uri, client, exp, _ = analysed
    before = len(client.search_runs([exp]))
    assert main(["--experiment", "facets", "--tracking-uri", uri, "--out", str(tmp_path / "x"),
                 "--compare", compare]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists() and len(client.search_runs([exp])) == before


def test_a_param_the_sweep_leaves_out_at_its_default_reads_as_the_default(tmp_path):
    """The sweep logs weight_decay only when it is not 0: runs with and without it make the axis (0, 0.1)."""
    uri, client = make_store(tmp_path)
    exp = create_experiment(client, "wd", tmp_path / "artifacts")
    rng = np.random.default_rng(3)
    for seed in range(3):
        for bn in (True, False):
            for wd in (0.0, 0.1):
                cfg = trial_config(0.01, bn, seed, epochs=EPOCHS, weight_decay=wd)
                if wd == 0.0:
                    del cfg["weight_decay"]  # as pipeline.trials.make_grid writes a default trial
                log_trial_run(client, exp, cfg, synthetic_history(cfg, rng))
    from analysis import load_runs

    df = load_runs("wd", uri)
    assert sorted(df["weight_decay"].unique()) == [0.0, 0.1] and axes_of(df) == ["weight_decay"]
    assert main(["--experiment", "wd", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-log"]) == 0
    assert set(pd.read_csv(tmp_path / "out" / "comparison.csv")["weight_decay"]) == {0.0, 0.1}


def test_the_figures_and_findings_say_the_sequences_span_every_cell(analysed):
    _, _, _, out = analysed
    report = (out / "report.md").read_text()
    assert "simultaneous over the 8 compared cells, which stay valid" in report
    assert "simultaneous over the 2 scales" not in report
