"""Named weight scales (he, xavier) beside numeric ones: sorted, labelled, compared, drawn and reported.

The sweep runs ``--weight-scales 0.01,he``; here such a store is written as the sweep writes it (a real SQLite
MLflow store, synthetic histories) and read back by the analysis.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from analysis import load_runs
from analysis.cli import main
from analysis.figures import plot_curves, plot_difference, plot_final_accuracy, plot_grid
from analysis.report import describe_scales
from analysis.scales import nearest_scale, parse_scale, scale_labels, sort_scales
from analysis.stats import arm_summary, final_summary, holm, paired_comparison
from tests.mlflow_fixtures import create_experiment, log_grid, make_store

SCALES = (0.1, "xavier", 0.01, "he")
SEEDS = (0, 1, 2)
EPOCHS = 3


@pytest.fixture(autouse=True)
def _restore_http_env(monkeypatch):
    """The CLI sets MLflow's HTTP retry env vars; keep them from leaking into other tests."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, "2"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    uri, client = make_store(root)
    exp_id = create_experiment(client, "named", root / "artifacts")
    logged = log_grid(client, exp_id, SCALES, SEEDS, epochs=EPOCHS)
    return uri, client, exp_id, logged, load_runs("named", uri)


def final_diff(logged, w, metric="test_acc") -> np.ndarray:
    """BN - plain final values of scale ``w`` by seed, from what was logged."""
    final = {(t.config["use_batchnorm"], t.config["seed"]): t.history[metric][-1] for t in logged
             if t.config["weight_scale"] == w}
    return np.array([final[(True, s)] - final[(False, s)] for s in SEEDS])


def test_scales_sort_numbers_first_then_names_and_label_each():
    assert sort_scales(["xavier", 1.0, "he", 0.01]) == [0.01, 1.0, "he", "xavier"]
    assert sort_scales(["xavier", 1.0, "he", 0.01], descending=True) == [1.0, 0.01, "he", "xavier"]
    assert scale_labels([0.0100, 0.0101, "he"]) == {0.01: "0.01", 0.0101: "0.0101", "he": "He"}
    assert parse_scale(" He ") == "he" and parse_scale("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf", "glorot"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    assert nearest_scale([0.1, "he", 0.001], 0.01) == 0.1  # a number when there is one
    assert nearest_scale(["xavier", "he"], 0.01) == "he"
    all_scales = [1.0, 0.1, 0.01, "he", "xavier"]
    assert describe_scales([0.1, 1.0, "he", "xavier"], all_scales) == "W=0.10\u20131.00, He init and Xavier init"
    assert describe_scales(["xavier"], all_scales) == "Xavier init"


def test_the_frame_keeps_named_scales_and_the_comparison_has_a_cell_each(store):
    _, _, _, logged, df = store
    assert sort_scales(df["weight_scale"].unique()) == [0.01, 0.1, "he", "xavier"]
    cmp = paired_comparison(df)
    test = cmp[cmp["metric"] == "test_acc"].set_index("weight_scale")
    assert list(test.index) == [0.01, 0.1, "he", "xavier"]
    for w in SCALES:
        diff = final_diff(logged, w)
        assert test.loc[w, "n_pairs"] == len(SEEDS)
        assert test.loc[w, "mean_diff"] == pytest.approx(diff.mean(), rel=1e-12)
        assert test.loc[w, "sd_diff"] == pytest.approx(diff.std(ddof=1), rel=1e-12)
    # Holm's family is every scale of the metric, named ones included
    np.testing.assert_allclose(test["p_ttest_holm"], holm(test["p_ttest"]), rtol=1e-12)


def test_figures_put_named_scales_beside_the_numbers(store):
    _, _, _, logged, df = store
    grid = plot_grid(arm_summary(df), "train_acc")
    assert [ax.get_title() for ax in grid.get_axes()] == ["W=0.10", "W=0.01", "He init", "Xavier init"]
    he_panel = grid.get_axes()[2]
    bn_mean = {ln.get_gid(): ln for ln in he_panel.get_lines()}["mean-bn"].get_ydata()
    np.testing.assert_allclose(bn_mean, np.mean([t.history["train_acc"] for t in logged if t.config["weight_scale"]
                                                 == "he" and t.config["use_batchnorm"]], axis=0), rtol=1e-12)
    assert "He init" in plot_curves(arm_summary(df), "he")._suptitle.get_text()

    cmp = paired_comparison(df)
    fig = plot_difference(cmp)
    axes = fig.get_axes()
    assert len(axes) == 4  # per metric: the log axis of the numbers, the axis of the names
    for log_ax, named_ax, metric in ((axes[0], axes[1], "train_acc"), (axes[2], axes[3], "test_acc")):
        assert log_ax.get_xscale() == "log"
        assert [t.get_text() for t in named_ax.get_xticklabels()] == ["He", "Xavier"]
        for ax, where in ((log_ax, [0.01, 0.1]), (named_ax, [0.0, 1.0])):
            cs = next(c for c in ax.collections if c.get_gid() == f"cs-{metric}")
            segments = sorted(cs.get_segments(), key=lambda s: s[0][0])
            rows = cmp[cmp["metric"] == metric].set_index("weight_scale")
            expected = rows.loc[[0.01, 0.1] if ax is log_ax else ["he", "xavier"]]
            np.testing.assert_allclose([s[0][0] for s in segments], where)
            np.testing.assert_allclose([s[0][1] for s in segments], expected["cs_low"], rtol=1e-12)
            np.testing.assert_allclose([s[1][1] for s in segments], expected["cs_high"], rtol=1e-12)

    final = final_summary(df)
    fig = plot_final_accuracy(final)
    named_ax = fig.get_axes()[1]
    line = {ln.get_gid(): ln for ln in named_ax.get_lines()}["final-bn-named"]
    assert line.get_linestyle() == "None"  # named scales are not a continuum: points, no line between them
    fm = final[(final["metric"] == "train_acc") & final["use_batchnorm"]].set_index("weight_scale")
    np.testing.assert_allclose(line.get_ydata(), fm.loc[["he", "xavier"], "mean"], rtol=1e-12)


def test_cli_reports_named_scales_and_logs_their_intervals(store, tmp_path, capsys):
    uri, client, exp_id, logged, _ = store
    out = tmp_path / "out"
    assert main(["--experiment", "named", "--tracking-uri", uri, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "loaded 24 runs" in captured.err and "skipped" not in captured.err
    comparison = pd.read_csv(out / "comparison.csv", dtype={"weight_scale": str})
    test = comparison[comparison["metric"] == "test_acc"].set_index("weight_scale")
    assert list(test.index) == ["0.01", "0.1", "he", "xavier"]
    assert test.loc["he", "mean_diff"] == pytest.approx(final_diff(logged, "he").mean(), rel=1e-9)
    report = (out / "report.md").read_text()
    assert "4 weight scales" in report
    for label in ("He", "Xavier", "0.10", "0.01"):
        assert f"| {label} | 3 |" in report  # a row of the comparison table: the scale, its pairs
    run = next(r for r in client.search_runs([exp_id], "tags.run_kind = 'analysis'"))
    assert run.data.metrics["test_acc/He/mean_diff"] == pytest.approx(test.loc["he", "mean_diff"], rel=1e-9)
    assert math.isfinite(run.data.metrics["test_acc/Xavier/cs_low"])
    assert run.data.params["n_weight_scales"] == "4"


def test_a_store_of_named_scales_only(tmp_path, capsys):
    uri, client = make_store(tmp_path / "store")
    exp_id = create_experiment(client, "he-only", tmp_path / "artifacts")
    log_grid(client, exp_id, ["he"], SEEDS, epochs=EPOCHS)
    out = tmp_path / "out"
    assert main(["--experiment", "he-only", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    assert "curves.png uses the nearest present scale He init" in capsys.readouterr().err
    assert "Train and test accuracy at He init" in (out / "report.md").read_text()
    assert len(plot_difference(paired_comparison(load_runs("he-only", uri))).get_axes()) == 2  # names only
