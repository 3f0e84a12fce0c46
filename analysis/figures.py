"""The figures: the 4x4 grid over weight scales, curves at one scale, final accuracy, the paired difference.

Every function takes the frames of :mod:`analysis.stats` and returns a :class:`matplotlib.figure.Figure`
(built without pyplot, so no global state and no GUI backend); :func:`save_figure` writes PNG and SVG.
BatchNorm (arm a of a comparison) is always blue and solid, plain (arm b) always orange and dashed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.scales import Scale, is_named, same_scale, scale_labels, sort_scales

ARMS = {True: {"color": "tab:blue", "linestyle": "-", "marker": "o"},
        False: {"color": "tab:orange", "linestyle": "--", "marker": "s"}}


@dataclass(frozen=True)
class Arms:
    """The two arms a comparison pairs by seed, as the figures and the report name them: arm a is the rows with
    ``use_batchnorm`` True (BatchNorm, or the first value of ``--compare``), arm b the others."""

    a: str = "BatchNorm"
    b: str = "plain (no BN)"
    short_a: str = "BN"
    short_b: str = "plain"
    with_a: str = "With BN"
    with_b: str = "Without BN"

    @property
    def diff(self) -> str:
        return f"{self.short_a} \u2212 {self.short_b}"

    def label(self, in_a: bool) -> str:
        return self.a if in_a else self.b

    def short(self, in_a: bool) -> str:
        return self.short_a if in_a else self.short_b


BN_PLAIN = Arms()


def compared_arms(axis: str, a: str, b: str) -> Arms:
    """The arms of ``--compare axis=a,b``."""
    return Arms(a=f"{axis}={a}", b=f"{axis}={b}", short_a=a, short_b=b, with_a=f"With {axis}={a}",
                with_b=f"With {axis}={b}")
METRIC_LABELS = {"train_acc": "train accuracy", "test_acc": "test accuracy", "train_loss": "train loss"}
BAND_ALPHA = 0.22


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def seeds_text(counts: Iterable[int]) -> str:
    """``n = 5 seeds per arm``, or ``n = 3-5 seeds per arm`` when arms differ."""
    counts = [int(c) for c in counts]
    if not counts:
        return "no seeds"
    lo, hi = min(counts), max(counts)
    word = "seed" if hi == 1 else "seeds"
    return f"n = {lo} {word} per arm" if lo == hi else f"n = {lo}\u2013{hi} {word} per arm"


def _final_counts(summary: pd.DataFrame, metric: str) -> pd.Series:
    """n at each arm's last epoch, index (weight_scale, use_batchnorm)."""
    s = summary[summary["metric"] == metric]
    last = s.groupby(["weight_scale", "use_batchnorm"])["epoch"].transform("max")
    return s[s["epoch"] == last].set_index(["weight_scale", "use_batchnorm"])["n"]


def _draw_arm(ax, arm: pd.DataFrame, bn: bool, *, band: bool = True, arms: Arms = BN_PLAIN) -> None:
    style = {**ARMS[bn], "label": arms.label(bn)}
    x = arm["epoch"].to_numpy()
    mean = arm["mean"].to_numpy(dtype=float)
    std = arm["std"].to_numpy(dtype=float)
    ax.plot(x, mean, color=style["color"], linestyle=style["linestyle"], linewidth=1.6,
            label=f"{style['label']} mean", gid=f"mean-{'bn' if bn else 'plain'}")
    if band and np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=BAND_ALPHA, linewidth=0,
                        label=f"{style['label']} \u00b1 std", gid=f"band-{'bn' if bn else 'plain'}")


def _legend_handles(band: bool = True, arms: Arms = BN_PLAIN) -> list:
    handles = []
    for bn in (True, False):
        s = {**ARMS[bn], "label": arms.label(bn)}
        handles.append(Line2D([], [], color=s["color"], linestyle=s["linestyle"], linewidth=1.6,
                              label=f"{s['label']}: mean"))
    if band:
        handles += [Patch(color=ARMS[bn]["color"], alpha=BAND_ALPHA + 0.1,
                          label=f"{arms.label(bn)} \u00b1 1 std over seeds") for bn in (True, False)]
    return handles


def plot_grid(summary: pd.DataFrame, metric: str = "train_acc", *, context: str = "",
              diverged: dict[tuple[float, bool], int] | None = None, counted: bool = False,
              arms: Arms = BN_PLAIN) -> Figure:
    """Figure 6-19 with uncertainty: one panel per weight scale (largest first, named scales last), mean +- std
    per arm.

    ``summary`` is :func:`analysis.stats.arm_summary`. The grid is the smallest near-square one that
    fits (4x4 for 16 scales). Arms with n < 2 at an epoch get no band there. ``diverged`` counts trials per
    (weight_scale, use_batchnorm) whose loss diverged; panels with any say so: "(k diverged)" when they are
    ``counted`` in ``summary``, "(+k diverged)" when they are not.
    """
    diverged = diverged or {}
    s = summary[summary["metric"] == metric]
    scales = sort_scales(s["weight_scale"].unique(), descending=True)
    if not scales:
        raise ValueError(f"no {metric} values to plot")
    labels = scale_labels(scales)
    k = len(scales)
    ncols = math.ceil(math.sqrt(k))
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(max(2.9 * ncols + 0.6, 8.0), 2.3 * nrows + 1.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    counts = _final_counts(summary, metric)
    max_epoch = int(s["epoch"].max())
    for i, ax in enumerate(axes.flat):
        if i >= k:
            fig.delaxes(ax)
            continue
        w = scales[i]
        for bn in (True, False):
            arm = s[same_scale(s["weight_scale"], w) & (s["use_batchnorm"] == bn)]
            if not arm.empty:
                _draw_arm(ax, arm, bn, arms=arms)
        ax.set_title(f"W={labels[w]}" if not is_named(w) else f"{labels[w]} init", fontsize=10)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(max_epoch, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3, linewidth=0.5)
        n_bn, n_plain = counts.get((w, True), 0), counts.get((w, False), 0)
        d_bn, d_plain = diverged.get((w, True), 0), diverged.get((w, False), 0)
        if counts.nunique() > 1 or d_bn or d_plain:  # say n per panel only when it is not the same everywhere
            mark = "" if counted else "+"
            text = (f"n: {arms.short_a} {n_bn}" + (f" ({mark}{d_bn} diverged)" if d_bn else "")
                    + f", {arms.short_b} {n_plain}" + (f" ({mark}{d_plain} diverged)" if d_plain else ""))
            ax.text(0.97, 0.04, text, transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=7, color="0.25",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        if i % ncols == 0:
            ax.set_ylabel(metric_label(metric))
        if i >= k - ncols:
            ax.set_xlabel("epoch")
            ax.tick_params(labelbottom=True)
    what = "W (std of the initial weights)" + (", or He/Xavier (a std per layer from its fan-in)"
                                               if any(is_named(w) for w in scales) else "")
    title = (f"{metric_label(metric).capitalize()} by initial weight scale {what}"
             + (": " if ncols >= 4 else "\n") + f"{arms.a} vs {arms.b}, mean \u00b1 1 std over seeds")
    sub = ", ".join(p for p in (context, seeds_text(counts.to_numpy())) if p)
    fig.suptitle(f"{title}\n{sub}", fontsize=11)
    fig.legend(handles=_legend_handles(arms=arms), loc="outside lower center", ncol=4 if ncols >= 4 else 2,
               fontsize=9, frameon=False)
    return fig


def plot_curves(summary: pd.DataFrame, weight_scale: Scale, *, context: str = "",
                metrics: Sequence[str] = ("train_acc", "test_acc"), arms: Arms = BN_PLAIN) -> Figure:
    """BN vs plain learning curves (mean +- std) at one weight scale, one panel per metric."""
    s = summary[same_scale(summary["weight_scale"], weight_scale)]
    if s.empty:
        raise ValueError(f"weight scale {weight_scale} not in the summary")
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    counts = []
    for ax, metric in zip(axes, metrics, strict=True):
        sm = s[s["metric"] == metric]
        for bn in (True, False):
            arm = sm[sm["use_batchnorm"] == bn]
            if not arm.empty:
                _draw_arm(ax, arm, bn, arms=arms)
        counts += _final_counts(sm, metric).tolist() if not sm.empty else []
        ax.set_title(metric_label(metric).capitalize())
        ax.set_xlabel("epoch")
        ax.set_xlim(0, max(int(sm["epoch"].max()) if not sm.empty else 1, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, linewidth=0.5)
    label = scale_labels([weight_scale])[weight_scale]
    sub = ", ".join(p for p in (context, seeds_text(counts)) if p)
    where = f"{label} init" if is_named(weight_scale) else f"W={label}"
    fig.suptitle(f"Learning curves at {where}: {arms.a} vs {arms.b}, mean \u00b1 1 std over seeds\n{sub}",
                 fontsize=11)
    fig.legend(handles=_legend_handles(arms=arms), loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    return fig


def _errorbar_arrays(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.vstack([mean - lo, hi - mean])


def _log_scale_axis(ax, scales: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("initial weight scale W (log)")
    lo, hi = min(scales), max(scales)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.grid(alpha=0.3, linewidth=0.5, which="major")


def _named_axis(ax, names: Sequence[str]) -> None:
    labels = scale_labels(names)
    ax.set_xticks(range(len(names)), [labels[n] for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("std from fan-in")
    ax.grid(alpha=0.3, linewidth=0.5, axis="y")


@dataclass(frozen=True)
class _Panel:
    """One metric's axes over the weight scales: ``log`` (numbers, W on a log axis) and ``named`` (He, Xavier, one
    position each on a narrow axis to its right); either is None when the figure has no such scale."""

    log: object | None
    named: object | None
    names: tuple[str, ...]

    @property
    def first(self):
        return self.log if self.log is not None else self.named

    def placed(self, frame: pd.DataFrame, dodge: float = 0.0) -> list[tuple[object, pd.DataFrame, np.ndarray, bool]]:
        """(axis, rows, x, is_log) for the rows of ``frame`` on each axis: the number itself on the log axis
        (times 10^dodge), the name's position on the named one (plus dodge / 0.1 of a position)."""
        named = frame["weight_scale"].map(is_named).to_numpy(dtype=bool)
        out = []
        if self.log is not None:
            rows = frame[~named]
            out.append((self.log, rows, rows["weight_scale"].to_numpy(dtype=float) * 10 ** dodge, True))
        if self.named is not None:
            rows = frame[named]
            x = np.array([self.names.index(w) for w in rows["weight_scale"]], dtype=float) + dodge * 4
            out.append((self.named, rows, x, False))
        return out

    def finish(self, scales: Sequence[Scale]) -> None:
        if self.log is not None:
            _log_scale_axis(self.log, [w for w in scales if not is_named(w)])
        if self.named is not None:
            _named_axis(self.named, self.names)


def _scale_panels(fig: Figure, n_metrics: int, scales: Iterable[Scale]) -> list[_Panel]:
    """One :class:`_Panel` per metric, every axis sharing y."""
    ordered = sort_scales(scales)
    names = tuple(w for w in ordered if is_named(w))
    has_numbers = len(names) < len(ordered)
    ratios = ([4.0] if has_numbers else []) + ([0.6 + 0.45 * len(names)] if names else [])
    axes = list(fig.subplots(1, n_metrics * len(ratios), sharey=True, squeeze=False,
                             width_ratios=ratios * n_metrics)[0])
    panels = []
    for i in range(n_metrics):
        group = axes[i * len(ratios):(i + 1) * len(ratios)]
        panels.append(_Panel(log=group[0] if has_numbers else None, named=group[-1] if names else None,
                             names=names))
    return panels


def plot_final_accuracy(final: pd.DataFrame, *, context: str = "",
                        metrics: Sequence[str] = ("train_acc", "test_acc"), arms: Arms = BN_PLAIN) -> Figure:
    """Final accuracy against weight scale, BN vs plain: mean with 95% t interval of the mean.

    ``final`` is :func:`analysis.stats.final_summary`. Arms with n = 1 get a point without a bar. Named scales
    (He, Xavier) stand on a narrow axis of their own to the right of the log axis.
    """
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    panels = _scale_panels(fig, len(metrics), final["weight_scale"])
    dodge = {True: -0.025, False: 0.025}
    no_bar = False
    for panel, metric in zip(panels, metrics, strict=True):
        fm = final[final["metric"] == metric]
        for bn in (True, False):
            st = {**ARMS[bn], "label": arms.label(bn)}
            for ax, arm, x, is_log in panel.placed(fm[fm["use_batchnorm"] == bn], dodge[bn]):
                if arm.empty:
                    continue
                order = np.argsort(x)
                arm, x = arm.iloc[order], x[order]
                mean = arm["mean"].to_numpy(dtype=float)
                yerr = _errorbar_arrays(mean, arm["ci_low"].to_numpy(dtype=float),
                                        arm["ci_high"].to_numpy(dtype=float))
                has_ci = np.isfinite(yerr).all(axis=0)
                no_bar |= bool((~has_ci & np.isfinite(mean)).any())
                ax.plot(x, mean, color=st["color"], linestyle=st["linestyle"] if is_log else "none",
                        marker=st["marker"], markersize=4.5, linewidth=1.3, label=st["label"],
                        gid=f"final-{'bn' if bn else 'plain'}{'' if is_log else '-named'}")
                ax.errorbar(x[has_ci], mean[has_ci], yerr=yerr[:, has_ci], fmt="none", ecolor=st["color"],
                            capsize=3, linewidth=1.1)
        epochs = fm["final_epoch"].unique()
        at = f"epoch {int(epochs.max())}" if len(epochs) == 1 else "final epoch"
        panel.first.set_title(f"Final {metric_label(metric)} ({at})")
        panel.first.set_ylabel(f"{metric_label(metric)} at the final epoch")
        panel.first.set_ylim(0, 1)
        panel.finish(final["weight_scale"].tolist())
    counts = final[final["metric"] == metrics[0]]["n"].tolist()
    sub = ", ".join(p for p in (context, seeds_text(counts)) if p)
    fig.suptitle("Final accuracy vs initial weight scale: mean with 95% confidence interval of the mean"
                 f"\n{sub}", fontsize=11)
    handles = [Line2D([], [], color=ARMS[bn]["color"], linestyle=ARMS[bn]["linestyle"],
                      marker=ARMS[bn]["marker"], label=arms.label(bn)) for bn in (True, False)]
    bar_label = "bar: 95% t interval of the mean" + (" (none where n = 1)" if no_bar else "")
    handles.append(Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label=bar_label))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return fig


@dataclass
class _Marks:
    """What a difference figure has drawn somewhere (its legend lists only those)."""

    nobar: bool = False
    no_pairs: bool = False
    cs: bool = False


DIFF_COLOR = "tab:purple"


def _draw_difference(ax, cm: pd.DataFrame, x: np.ndarray, metric: str, *, connect: bool, marks: _Marks,
                     shown: list[np.ndarray]) -> None:
    """One axis of :func:`plot_difference`: the rows ``cm`` (one metric) at ``x``."""
    color = DIFF_COLOR
    order = np.argsort(x)
    cm, x = cm.iloc[order], x[order]
    y = cm["mean_diff"].to_numpy(dtype=float)
    lo = cm["ci_low"].to_numpy(dtype=float)
    hi = cm["ci_high"].to_numpy(dtype=float)
    ax.axhline(0, color="0.2", linewidth=1, zorder=1)
    cs_lo = cm["cs_low"].to_numpy(dtype=float) if "cs_low" in cm else np.full(len(cm), np.nan)
    cs_hi = cm["cs_high"].to_numpy(dtype=float) if "cs_high" in cm else np.full(len(cm), np.nan)
    has_cs = np.isfinite(cs_lo) & np.isfinite(cs_hi)
    marks.cs |= bool(has_cs.any())
    ax.vlines(x[has_cs], cs_lo[has_cs], cs_hi[has_cs], color=color, alpha=0.22, linewidth=7, zorder=1.5,
              gid=f"cs-{metric}")
    if connect:
        ax.plot(x, y, color=color, linewidth=1, alpha=0.5, zorder=2)
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    yerr = _errorbar_arrays(y, lo, hi)
    ax.errorbar(x[has_ci], y[has_ci], yerr=yerr[:, has_ci], fmt="none", ecolor=color, capsize=3,
                linewidth=1.3, zorder=3)
    sig = cm["significant"].to_numpy(dtype=bool)
    ax.scatter(x[sig], y[sig], color=color, marker="o", s=36, zorder=4, label="significant")
    ax.scatter(x[~sig & has_ci], y[~sig & has_ci], facecolor="white", edgecolor=color, marker="o", s=36,
               zorder=4, label="not significant")
    nobar = ~has_ci & np.isfinite(y)
    marks.nobar |= bool(nobar.any())
    ax.scatter(x[nobar], y[nobar], color=color, marker="x", s=36, zorder=4, label="no interval")
    # a scale without a single pair has no difference to plot: a mark on the zero line says it is missing
    no_pairs = cm["n_pairs"].to_numpy() == 0
    marks.no_pairs |= bool(no_pairs.any())
    ax.scatter(x[no_pairs], np.zeros(int(no_pairs.sum())), color="0.45", marker="D", s=30, zorder=4,
               label="no pairs")
    for xi in x[no_pairs]:
        ax.annotate("0 pairs", (xi, 0), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7,
                    color="0.3")
    top = np.where(has_ci, hi, y)
    for xi, ti in zip(x[sig], top[sig], strict=True):
        ax.annotate("*", (xi, ti), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=13,
                    color=color)
    shown += [y[np.isfinite(y)], lo[np.isfinite(lo)], hi[np.isfinite(hi)], cs_lo[has_cs], cs_hi[has_cs]]


def plot_difference(comparison: pd.DataFrame, *, context: str = "", alpha: float = 0.05,
                    metrics: Sequence[str] = ("train_acc", "test_acc"), arms: Arms = BN_PLAIN,
                    family: int | None = None) -> Figure:
    """Paired BN - plain difference at the final epoch per weight scale, with its 95% t interval (thin bar) and,
    where ``comparison`` has them, its anytime-valid confidence sequence (wide light bar, cs_low to cs_high),
    simultaneous over ``family`` cells (default: the scales shown). Named scales (He, Xavier) stand on a narrow
    axis of their own to the right of the log axis.

    Filled markers (and a star) mark scales significant after Holm correction; hollow markers are not
    significant; a cross marks a scale with no interval (fewer than 2 pairs, or no spread); a grey diamond on
    the zero line marks a scale with no pair at all.
    """
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    panels = _scale_panels(fig, len(metrics), comparison["weight_scale"])
    color = DIFF_COLOR
    pairs = []
    shown: list[np.ndarray] = []
    marks = _Marks()
    for panel, metric in zip(panels, metrics, strict=True):
        cm = comparison[comparison["metric"] == metric]
        pairs += cm["n_pairs"].tolist()
        for ax, rows, x, is_log in panel.placed(cm):
            _draw_difference(ax, rows, x, metric, connect=is_log, marks=marks, shown=shown)
        panel.first.set_title(f"{arms.diff}, {metric_label(metric)} at the final epoch")
        panel.first.set_ylabel(f"paired difference in {metric_label(metric)}")
        panel.finish(comparison["weight_scale"].tolist())
    # One y range for every panel (they share the axis): everything plotted, and zero, stays in view.
    finite = np.concatenate([*shown, [0.0]])
    span = max(finite.max() - finite.min(), 0.02)
    panels[0].first.set_ylim(finite.min() - 0.08 * span, finite.max() + 0.12 * span)
    n_text = seeds_text(pairs).replace("seeds per arm", "pairs (seeds) per scale").replace(
        "seed per arm", "pair (seed) per scale")
    sub = ", ".join(p for p in (context, n_text) if p)
    what = "mean with 95% t interval" + (" (thin bar) and anytime-valid 95% confidence sequence (wide bar)"
                                         if marks.cs else "")
    fig.suptitle(f"Paired difference {arms.a} \u2212 {arms.b} (same seed = same initial weights and batches)\n"
                 f"{what}\n{sub}", fontsize=11)
    handles = [
        Line2D([], [], color=color, marker="o", linestyle="none",
               label=f"* significant: Holm-corrected paired t-test p < {alpha:g}"),
        Line2D([], [], markerfacecolor="white", markeredgecolor=color, marker="o", linestyle="none",
               label="not significant"),
        Line2D([], [], color="0.2", linewidth=1, label="no difference (0)"),
        Line2D([], [], color=color, marker="|", linestyle="none", markersize=10,
               label="thin bar: 95% t interval\n(valid for a number of seeds fixed in advance)"),
    ]
    if marks.cs:
        n_scales = comparison["weight_scale"].nunique()
        over = f"{n_scales} scales" if family in (None, n_scales) else f"{family} compared cells"
        handles.append(Line2D([], [], color=color, alpha=0.22, linewidth=7,
                              label="wide bar: anytime-valid 95% confidence sequence, simultaneous over the "
                                    f"{over}\n(read it if seeds were added after looking)"))
    if marks.nobar:
        handles.append(Line2D([], [], color=color, marker="x", linestyle="none",
                              label="no interval, no t-test: fewer than 2 pairs, or all seeds equal"))
    if marks.no_pairs:
        handles.append(Line2D([], [], color="0.45", marker="D", linestyle="none",
                              label="0 pairs: an arm has no finished run (e.g. all diverged)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    return fig


def save_figure(fig: Figure, out_dir: Path | str, stem: str, formats: Sequence[str] = ("png", "svg"),
                dpi: int = 110) -> list[Path]:
    """Write ``out_dir/stem.<fmt>`` for each format; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi)
        paths.append(path)
    return paths
