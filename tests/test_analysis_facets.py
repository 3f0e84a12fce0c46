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
