"""The figures (inspected as matplotlib objects), the written files and the report, from a real store."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from analysis import load_runs
from analysis.figures import (
    plot_curves,
    plot_difference,
    plot_final_accuracy,
    plot_grid,
    save_figure,
    seeds_text,
)
from analysis.report import build_report, describe_data, describe_scales, findings
from analysis.scales import scale_labels
from analysis.stats import arm_summary, final_summary, paired_comparison
from tests.mlflow_fixtures import BOOK_WEIGHT_SCALES, create_experiment, log_grid, make_store

EPOCHS = 3
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The book's 16 weight scales x 2 arms x 3 seeds; returns (logged trials, tidy frame)."""
    root = tmp_path_factory.mktemp("fig-store")
    uri, client = make_store(root)
    exp_id = create_experiment(client, "figs", root / "artifacts")
    logged = log_grid(client, exp_id, BOOK_WEIGHT_SCALES, SEEDS, epochs=EPOCHS)
    return logged, load_runs("figs", uri)


def expected_curve(logged, w, bn, metric="train_acc"):
    stack = np.array([t.history[metric] for t in logged
                      if t.config["weight_scale"] == w and t.config["use_batchnorm"] == bn])
    return stack.mean(axis=0), stack.std(axis=0, ddof=1)


def band_extent(collection: PolyCollection) -> tuple[float, float]:
    ys = np.concatenate([p.vertices[:, 1] for p in collection.get_paths()])
    return float(ys.min()), float(ys.max())


def test_grid_has_one_panel_per_scale_with_two_means_and_two_bands(sweep):
    logged, df = sweep
    fig = plot_grid(arm_summary(df), "train_acc", context=describe_data(df))
    axes = fig.get_axes()
    assert len(axes) == 16
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "W=1.00" and titles[-1] == "W=0.0001"
    assert len(set(titles)) == 16
    # largest scale first, and each title names its own scale
    shown = [float(t.removeprefix("W=")) for t in titles]
    np.testing.assert_allclose(shown, sorted(BOOK_WEIGHT_SCALES, reverse=True), rtol=0.05)
    for ax, w in zip(axes, sorted(BOOK_WEIGHT_SCALES, reverse=True), strict=True):
        lines = {ln.get_gid(): ln for ln in ax.get_lines()}
        assert set(lines) == {"mean-bn", "mean-plain"}
        assert lines["mean-bn"].get_linestyle() == "-"
        assert lines["mean-plain"].get_linestyle() == "--"
        bands = {c.get_gid(): c for c in ax.collections}
        assert set(bands) == {"band-bn", "band-plain"}
        for bn, key in ((True, "bn"), (False, "plain")):
            mean, std = expected_curve(logged, w, bn)
            np.testing.assert_allclose(lines[f"mean-{key}"].get_ydata(), mean, rtol=1e-12)
            np.testing.assert_array_equal(lines[f"mean-{key}"].get_xdata(), np.arange(EPOCHS + 1))
            lo, hi = band_extent(bands[f"band-{key}"])
            assert lo == pytest.approx((mean - std).min(), rel=1e-9)
            assert hi == pytest.approx((mean + std).max(), rel=1e-9)
        assert ax.get_ylim() == (0, 1)
    assert len(fig.legends) == 1
    suptitle = fig._suptitle.get_text()
    assert "n = 3 seeds per arm" in suptitle and "fashion-mnist" in suptitle and "train accuracy" in suptitle.lower()
    assert axes[-1].get_xlabel() == "epoch" and axes[0].get_ylabel() == "train accuracy"


def test_grid_fits_fewer_scales_and_shows_unequal_seed_counts(sweep):
    _, df = sweep
    five = sorted(BOOK_WEIGHT_SCALES)[:5]
    sub = df[df["weight_scale"].isin(five)]
    # drop seed 2 of the plain arm at the smallest scale: 2 vs 3 seeds
    sub = sub[~((sub["weight_scale"] == five[0]) & ~sub["use_batchnorm"] & (sub["seed"] == 2))]
    fig = plot_grid(arm_summary(sub), "test_acc")
    assert len(fig.get_axes()) == 5  # a 3x2 grid with the unused panel removed
    rows_cols = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.get_axes()}
    assert rows_cols == {(2, 3)}
    assert "n = 2\u20133 seeds per arm" in fig._suptitle.get_text()
    texts = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    assert "n: BN 3, plain 2" in texts


def test_grid_draws_no_band_for_a_single_seed(sweep):
    _, df = sweep
    w = max(BOOK_WEIGHT_SCALES)
    one = df[(df["weight_scale"] == w) & ((df["seed"] == 0) | df["use_batchnorm"])]
    fig = plot_grid(arm_summary(one))
    (ax,) = fig.get_axes()
    assert {c.get_gid() for c in ax.collections} == {"band-bn"}
    assert {ln.get_gid() for ln in ax.get_lines()} == {"mean-bn", "mean-plain"}


def test_curves_show_train_and_test_for_one_scale(sweep):
    logged, df = sweep
    w = sorted(BOOK_WEIGHT_SCALES)[7]
    fig = plot_curves(arm_summary(df), w, context="ctx")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["Train accuracy", "Test accuracy"]
    for ax, metric in zip(axes, ("train_acc", "test_acc"), strict=True):
        lines = {ln.get_gid(): ln for ln in ax.get_lines()}
        np.testing.assert_allclose(lines["mean-bn"].get_ydata(), expected_curve(logged, w, True, metric)[0])
        np.testing.assert_allclose(lines["mean-plain"].get_ydata(), expected_curve(logged, w, False, metric)[0])
        assert len(ax.collections) == 2
    assert f"W={scale_labels([w])[w]}" in fig._suptitle.get_text()
    fig.canvas.draw()  # ticks as drawn: whole epochs only, however few
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    with pytest.raises(ValueError):
        plot_curves(arm_summary(df), 0.123)


def test_final_accuracy_plots_means_with_confidence_bars(sweep):
    logged, df = sweep
    final = final_summary(df)
    fig = plot_final_accuracy(final, context="ctx")
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax, metric in zip(axes, ("train_acc", "test_acc"), strict=True):
        assert ax.get_xscale() == "log"
        lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
        for bn, key in ((True, "bn"), (False, "plain")):
            expected = [expected_curve(logged, w, bn, metric)[0][-1] for w in sorted(BOOK_WEIGHT_SCALES)]
            np.testing.assert_allclose(lines[f"final-{key}"].get_ydata(), expected, rtol=1e-12)
        # one error bar per scale and arm
        bars = [c for c in ax.collections if len(c.get_segments()) == 16]
        assert len(bars) == 2
        assert "95% confidence interval" in fig._suptitle.get_text()


def test_difference_marks_significant_scales_and_the_zero_line(sweep):
    _, df = sweep
    comp = paired_comparison(df)
    fig = plot_difference(comp, context="ctx")
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax, metric in zip(axes, ("train_acc", "test_acc"), strict=True):
        cm = comp[comp["metric"] == metric]
        assert ax.get_xscale() == "log"
        assert any(np.all(np.asarray(ln.get_ydata()) == 0) for ln in ax.get_lines())  # the zero line
        stars = [t for t in ax.texts if t.get_text() == "*"]
        assert len(stars) == int(cm["significant"].sum())
        scatters = {c.get_label(): c for c in ax.collections if c.get_label() in ("significant", "not significant")}
        assert len(scatters["significant"].get_offsets()) == int(cm["significant"].sum())
        assert len(scatters["not significant"].get_offsets()) == int((~cm["significant"]).sum())
        low, high = ax.get_ylim()  # every mean and interval of either panel is in view
        values = cm[["mean_diff", "ci_low", "ci_high"]].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        assert low <= values.min() and values.max() <= high


def test_difference_without_pairs_shows_no_interval(sweep):
    _, df = sweep
    one = df[df["seed"] == 0]
    comp = paired_comparison(one)
    assert comp["ci_low"].isna().all()
    fig = plot_difference(comp)
    for ax in fig.get_axes():
        no_ci = [c for c in ax.collections if c.get_label() == "no interval"]
        assert len(no_ci[0].get_offsets()) == 16
        assert not [t for t in ax.texts if t.get_text() == "*"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("fewer than 2 pairs" in t for t in labels)
    assert not any(t.startswith("0 pairs") for t in labels)  # every scale has its one pair


def test_difference_marks_a_scale_with_no_pair_on_the_zero_line(sweep):
    """Every plain trial of one scale diverged: its difference is missing, and the figure says so where it would be."""
    _, df = sweep
    gone = sorted(BOOK_WEIGHT_SCALES)[-2]
    comp = paired_comparison(df[~((df["weight_scale"] == gone) & ~df["use_batchnorm"])])
    assert (comp.loc[comp["weight_scale"] == gone, "n_pairs"] == 0).all()
    fig = plot_difference(comp)
    for ax in fig.get_axes():
        marks = [c for c in ax.collections if c.get_label() == "no pairs"]
        np.testing.assert_allclose(marks[0].get_offsets(), [[gone, 0.0]])
        assert [t.xy for t in ax.texts if t.get_text() == "0 pairs"] == [(gone, 0)]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("0 pairs: an arm has no finished run") for t in labels)


def test_save_figure_writes_png_and_svg(sweep, tmp_path):
    _, df = sweep
    paths = save_figure(plot_grid(arm_summary(df)), tmp_path / "out", "grid")
    assert [p.name for p in paths] == ["grid.png", "grid.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]


def test_report_lists_every_weight_scale_and_states_findings(sweep):
    _, df = sweep
    comp = paired_comparison(df, width=0.02)
    final = final_summary(df, width=0.02)
    text = build_report(experiment="figs", tracking_uri="sqlite:///x.db", df=df, comparison=comp, final=final,
                        figures={"grid": "grid.png", "difference": "difference.png"}, curves_scale=0.01,
                        metric="train_acc", width=0.02, alpha=0.05, notes=["duplicate trial abc"])
    labels = scale_labels(BOOK_WEIGHT_SCALES)
    for w in BOOK_WEIGHT_SCALES:
        assert text.count(f"| {labels[w]} |") >= 3, labels[w]  # test table, train table, seeds table
    assert "![grid](grid.png)" in text and "![difference](difference.png)" in text
    assert "- duplicate trial abc" in text
    n_sig_test = int(comp[(comp["metric"] == "test_acc") & comp["significant"] & (comp["mean_diff"] > 0)].shape[0])
    para = findings(comp, final, alpha=0.05, width=0.02)
    assert para in text
    assert f"at {n_sig_test} of 16 tested scales for test accuracy" in para
    top = comp.loc[comp["mean_diff"].abs().idxmax()]
    assert f"{top['mean_diff']:+.3f}" in para
    # synthetic plain nets do not learn at the smallest scales: the report says where
    plain_fail = final[(final["metric"] == "train_acc") & ~final["use_batchnorm"] & (final["mean"] < 0.2)]
    assert describe_scales(plain_fail["weight_scale"], BOOK_WEIGHT_SCALES) in para
    worst = comp[comp["metric"] == "test_acc"]["seeds_needed_diff"].max()
    assert f"up to {int(worst)} seeds" in para
    assert "2/2^3" in para  # with 3 pairs the Wilcoxon test cannot reach 0.05


def test_labels_and_texts():
    labels = scale_labels(BOOK_WEIGHT_SCALES)
    assert labels[1.0] == "1.00" and labels[1e-4] == "0.0001"
    assert len(set(labels.values())) == 16
    assert scale_labels([0.0100, 0.0101]) == {0.01: "0.01", 0.0101: "0.0101"}  # as many digits as needed
    assert seeds_text([5, 5]) == "n = 5 seeds per arm"
    assert seeds_text([3, 5]) == "n = 3\u20135 seeds per arm"
    assert seeds_text([1]) == "n = 1 seed per arm"
    scales = [0.001, 0.01, 0.1, 1.0]
    assert describe_scales([0.001, 0.01, 1.0], scales) == "W=0.001\u20130.01 and 1.00"
    assert describe_scales([], scales) == "none"
    assert math.isclose(float(labels[BOOK_WEIGHT_SCALES[3]]), BOOK_WEIGHT_SCALES[3], rel_tol=0.05)


def test_difference_draws_the_confidence_sequence_behind_the_t_interval(sweep):
    _, df = sweep
    comp = paired_comparison(df)
    fig = plot_difference(comp)
    for ax, metric in zip(fig.get_axes(), ("train_acc", "test_acc"), strict=True):
        cm = comp[comp["metric"] == metric].sort_values("weight_scale")
        [bars] = [c for c in ax.collections if c.get_gid() == f"cs-{metric}"]
        ends = np.array([[seg[0][1], seg[1][1]] for seg in bars.get_segments()])
        np.testing.assert_allclose(ends, cm[["cs_low", "cs_high"]].dropna().to_numpy(dtype=float))
        low, high = ax.get_ylim()
        assert low <= ends.min() and ends.max() <= high
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("wide bar: anytime-valid 95% confidence sequence, simultaneous over the 16")
               for t in labels)
    assert "confidence sequence" in fig.get_suptitle()
