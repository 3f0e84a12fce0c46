"""report.md: the figures, the tables and one paragraph of findings written from the numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from analysis.facets import axis_name, facet_label, value_label
from analysis.figures import BN_PLAIN, Arms, metric_label, seeds_text
from analysis.scales import Scale, is_named, scale_labels, scale_phrase, sort_by_scale, sort_scales
from tracking.uri import display_store

#: Final train accuracy below this counts as "failed to learn" (chance is 0.10 for 10 classes).
FAIL_THRESHOLD = 0.2
#: "Failed to learn" (or learned) is said of an arm only from at least this many finished runs.
MIN_RUNS_TO_SAY = 2
#: The fixed hyperparameters the report names, in this order, with their words.
SETUP_PARAMS = (("dataset", "data set"), ("train_size", "training samples"), ("test_size", "test samples"),
                ("epochs", "epochs"), ("batch_size", "batch size"), ("lr", "learning rate"),
                ("optimizer", "optimizer"), ("hidden_size_list", "hidden layers"), ("activation", "activation"),
                ("dtype", "dtype"))
NO_SPREAD = "no spread: all seeds equal"


def _unique(df: pd.DataFrame, col: str) -> list:
    return sorted(df[col].dropna().unique().tolist(), key=str) if col in df else []


def describe_data(df: pd.DataFrame) -> str:
    """``fashion-mnist, 1000 training samples, 20 epochs`` from the runs' params (ranges if mixed)."""
    parts = []
    datasets = _unique(df, "dataset")
    if datasets:
        parts.append("/".join(str(d) for d in datasets))
    for col, word in (("train_size", "training samples"), ("epochs", "epochs")):
        values = _unique(df, col)
        if values:
            text = str(values[0]) if len(values) == 1 else f"{min(values)}\u2013{max(values)}"
            parts.append(f"{text} {word}")
    return ", ".join(parts)


def _values_text(df: pd.DataFrame, col: str) -> str:
    values = _unique(df, col)
    if not values:
        return "\u2013 (not recorded)"
    return ", ".join(str(v) for v in values) + (" (mixed)" if len(values) > 1 else "")


def _seeds_list(seeds: Sequence[int]) -> str:
    """``0-4, 7, 9``: sorted seeds, runs of consecutive ones as ranges."""
    groups: list[list[int]] = []
    for seed in sorted(set(int(x) for x in seeds)):
        if groups and seed == groups[-1][-1] + 1:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    return ", ".join(str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups)


def describe_setup(df: pd.DataFrame) -> list[str]:
    """Report lines naming what every trial shares: each fixed hyperparameter, the seeds, the code version."""
    lines = [f"{word}: {_values_text(df, col)}" for col, word in SETUP_PARAMS]
    lines.append(f"seeds: {_seeds_list(df['seed'].unique()) if len(df) else 'none'}")
    lines.append(f"code version (git commit): {_values_text(df, 'code_version')}")
    return lines


def describe_scales(selected: Sequence[Scale], all_scales: Sequence[Scale]) -> str:
    """Weight scales as contiguous ranges of the sorted numeric scales, then the named ones:
    ``W=0.0001–0.0074 and 0.16–1.00``, ``W=0.01 and He init``."""
    order = sort_scales(all_scales)
    labels = scale_labels(order)
    chosen = set(selected)
    groups: list[list[Scale]] = []
    for i, w in enumerate(order):
        if w in chosen:
            if groups and not is_named(w) and groups[-1][-1] == order[i - 1] and not is_named(order[i - 1]):
                groups[-1].append(w)
            else:
                groups.append([w])
    parts = [labels[g[0]] if len(g) == 1 else f"{labels[g[0]]}\u2013{labels[g[-1]]}" for g in groups]
    parts = [f"{p} init" if is_named(g[0]) else p for p, g in zip(parts, groups, strict=True)]
    if not parts:
        return "none"
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text if is_named(groups[0][0]) else f"W={text}"


def _fmt(x: float, digits: int = 3) -> str:
    return "\u2013" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "\u2013"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _fmt_n(n: float) -> str:
    if n is None or math.isnan(n):
        return "\u2013"
    return "> 10^7" if math.isinf(n) else str(int(n))


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def findings(comparison: pd.DataFrame, final: pd.DataFrame, *, alpha: float, width: float,
             arms: Arms = BN_PLAIN, family: int | None = None) -> str:
    """One paragraph stating what the numbers say (significance, largest difference, failures, seeds)."""
    scales = sort_scales(comparison["weight_scale"].unique())
    n_pairs = comparison["n_pairs"]
    sentences = []
    pairs_text = seeds_text(n_pairs).replace("seeds per arm", "paired seeds per scale").replace(
        "seed per arm", "paired seed per scale")
    sentences.append(f"Across {len(scales)} weight scales ({describe_scales(scales, scales)}) with {pairs_text}:")

    higher, lower = [], []
    for metric in ("test_acc", "train_acc"):
        cm = comparison[comparison["metric"] == metric]
        if cm.empty:
            continue
        tested = int(cm["p_ttest"].notna().sum())
        better = cm[cm["significant"] & (cm["mean_diff"] > 0)]["weight_scale"]
        worse = cm[cm["significant"] & (cm["mean_diff"] < 0)]["weight_scale"]
        where = "" if not len(better) else (" (all)" if len(better) == len(scales)
                                             else f" ({describe_scales(better, scales)})")
        higher.append(f"{len(better)} of {tested} tested scales for {metric_label(metric)}{where}")
        if len(worse):
            lower.append(f"{len(worse)} for {metric_label(metric)} ({describe_scales(worse, scales)})")
    if higher:
        text = (f"{arms.a}'s final accuracy was significantly higher than {arms.b}'s (paired t-test, "
                f"Holm-corrected across scales, p < {alpha:g}) at " + " and at ".join(higher))
        if lower:
            text += "; it was significantly lower at " + " and at ".join(lower)
        sentences.append(text + ".")

    anytime = _anytime_sentence(comparison, scales, alpha, arms, family)
    if anytime:
        sentences.append(anytime)

    finite = comparison[comparison["mean_diff"].notna()]
    if not finite.empty:
        top = finite.loc[finite["mean_diff"].abs().idxmax()]
        if top["n_pairs"] >= 2 and top["sd_diff"] == 0:
            ci = f" ({NO_SPREAD})"
        elif math.isnan(top["ci_low"]):
            ci = ""
        else:
            ci = f" (95% CI {_signed(top['ci_low'])} to {_signed(top['ci_high'])})"
        sentences.append(f"The largest mean difference, {arms.diff}, was {_signed(top['mean_diff'])}{ci} "
                         f"in {metric_label(top['metric'])} at {describe_scales([top['weight_scale']], scales)}.")

    ft = final[final["metric"] == "train_acc"]
    if not ft.empty:
        few_runs = ft[ft["n"] < MIN_RUNS_TO_SAY]
        ft = ft[ft["n"] >= MIN_RUNS_TO_SAY]
        failed = {bn: ft[(ft["use_batchnorm"] == bn) & (ft["mean"] < FAIL_THRESHOLD)]["weight_scale"]
                  for bn in (False, True)}
        crit = f"mean final train accuracy below {FAIL_THRESHOLD:.2f}; chance is 0.10"
        if len(failed[False]):
            sentences.append(f"{arms.with_b} the network failed to learn ({crit}) at "
                             f"{describe_scales(failed[False], scales)}.")
        else:
            sentences.append(f"{arms.with_b} the network learned at every scale (mean final train accuracy at "
                             f"least {FAIL_THRESHOLD:.2f} everywhere).")
        if len(failed[True]):
            sentences.append(f"{arms.with_a} it failed to learn at {describe_scales(failed[True], scales)}.")
        else:
            sentences.append(f"{arms.with_a} it learned at every scale.")
        for bn in (False, True):
            where = few_runs[few_runs["use_batchnorm"] == bn]["weight_scale"]
            if len(where):
                sentences.append(f"{arms.with_a if bn else arms.with_b} too few runs finished at "
                                 f"{describe_scales(where, scales)} (fewer than {MIN_RUNS_TO_SAY}) to say whether "
                                 "it learned there.")

    few = comparison[comparison["n_pairs"] < 2]["weight_scale"].unique()
    if len(few):
        sentences.append(f"At {describe_scales(few, scales)} there were fewer than 2 pairs, so no interval "
                         "or test.")
    need = comparison[comparison["metric"] == "test_acc"] if "test_acc" in set(comparison["metric"]) \
        else comparison
    need_diff = need["seeds_needed_diff"].replace(np.inf, np.nan)
    if need_diff.notna().any():
        worst = need.loc[need_diff.idxmax()]
        arm_need = pd.concat([need["seeds_needed_bn"], need["seeds_needed_plain"]]).replace(np.inf, np.nan)
        sentences.append(
            f"For every 95% interval of the paired {metric_label(worst['metric'])} difference to be narrower "
            f"than {width:g} (full width), up to {_fmt_n(worst['seeds_needed_diff'])} seeds would be needed "
            f"(at {describe_scales([worst['weight_scale']], scales)}, which has {int(worst['n_pairs'])} pairs now); "
            "for the "
            f"interval of each arm's mean {metric_label(worst['metric'])}, up to {_fmt_n(arm_need.max())}.")
    small = int(n_pairs[n_pairs >= 2].min()) if (n_pairs >= 2).any() else 0
    if 2 <= small and 2.0 / 2**small >= alpha:
        sentences.append(f"With {small} pairs the two-sided Wilcoxon signed-rank test cannot go below "
                         f"p = 2/2^{small} = {2.0 / 2**small:.3g}, so it cannot reach p < {alpha:g} there; "
                         "only the t-test can.")
    return " ".join(sentences)


def _anytime_sentence(comparison: pd.DataFrame, scales: Sequence[float], alpha: float, arms: Arms,
                      family: int | None = None) -> str:
    """What the confidence sequences decide, per metric (empty when the frame has none)."""
    if "cs_low" not in comparison:
        return ""
    parts = []
    for metric in ("test_acc", "train_acc"):
        cm = comparison[comparison["metric"] == metric]
        if cm.empty:
            continue
        up = cm[cm["cs_low"] > 0]["weight_scale"]
        down = cm[cm["cs_high"] < 0]["weight_scale"]
        text = f"in {metric_label(metric)} {arms.a} is higher at {len(up)} of {len(cm)} scales"
        text += f" ({describe_scales(up, scales)})" if len(up) and len(up) < len(cm) else ""
        if len(down):
            text += f" and lower at {len(down)} ({describe_scales(down, scales)})"
        parts.append(text)
    if not parts:
        return ""
    over = f"{len(scales)} scales" if family in (None, len(scales)) else f"{family} compared cells"
    return (f"Read as anytime-valid (the {100 * (1 - alpha):g}% confidence sequences, simultaneous over the "
            f"{over}, which stay valid when seeds were added after looking): "
            + "; ".join(parts) + "; at the other scales they do not exclude 0 yet.")


def facet_findings(comparison: pd.DataFrame, final: pd.DataFrame, axes: Sequence[str], *, alpha: float,
                   width: float, arms: Arms = BN_PLAIN) -> str:
    """:func:`findings`, one paragraph per combination of the ``axes`` (named in bold) when there are any."""
    if not axes:
        return findings(comparison, final, alpha=alpha, width=width, arms=arms)
    out = []
    family = int((comparison["metric"] == comparison["metric"].iloc[0]).sum()) if len(comparison) else None
    for values, cm in comparison.groupby(list(axes), sort=True):
        facet = dict(zip(axes, values if isinstance(values, tuple) else (values,), strict=True))
        fm = final.merge(pd.DataFrame([facet]), on=list(axes))
        out.append(f"**{facet_label(facet)}**: "
                   + findings(cm.reset_index(drop=True), fm, alpha=alpha, width=width, arms=arms, family=family))
    return "\n\n".join(out)


def _axis_columns(axes: Sequence[str]) -> list[tuple[str, Callable[[pd.Series], str]]]:
    return [(axis_name(a), lambda r, a=a: value_label(r[a])) for a in axes]


def markdown_table(frame: pd.DataFrame, columns: Sequence[tuple[str, Callable[[pd.Series], str]]]) -> str:
    """A pipe table: ``columns`` is a list of (header, row -> cell text)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        cells = [str(fn(row)).replace("|", "\\|") for _, fn in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference_cell(r: pd.Series) -> str:
    if r["n_pairs"] >= 2 and r["sd_diff"] == 0 and r["mean_diff"] != 0:
        return f"{_fmt(r['mean_diff'])} ({NO_SPREAD})"
    return f"{_fmt(r['mean_diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"


def _comparison_table(cm: pd.DataFrame, labels: dict[float, str], axes: Sequence[str] = (),
                      arms: Arms = BN_PLAIN) -> str:
    order = sort_by_scale(cm, [*axes, "weight_scale"], descending=True)
    return markdown_table(order, [
        *_axis_columns(axes),
        ("W", lambda r: labels[r["weight_scale"]]),
        ("pairs", lambda r: int(r["n_pairs"])),
        (f"{arms.short_a} mean \u00b1 sd (n)",
         lambda r: f"{_fmt(r['mean_bn'])} \u00b1 {_fmt(r['sd_bn'])} ({int(r['n_bn'])})"),
        (f"{arms.short_b} mean \u00b1 sd (n)",
         lambda r: f"{_fmt(r['mean_plain'])} \u00b1 {_fmt(r['sd_plain'])} ({int(r['n_plain'])})"),
        (f"{arms.diff} [95% CI]", _difference_cell),
        ("anytime 95% CS (seeds)", lambda r: f"[{_fmt(r['cs_low'])}, {_fmt(r['cs_high'])}] ({int(r['cs_n'])})"),
        ("p anytime", lambda r: _fmt_p(r["p_anytime"])),
        ("p t-test", lambda r: _fmt_p(r["p_ttest"])),
        ("p t-test Holm", lambda r: _fmt_p(r["p_ttest_holm"])),
        ("p Wilcoxon", lambda r: _fmt_p(r["p_wilcoxon"])),
        ("p Wilcoxon Holm", lambda r: _fmt_p(r["p_wilcoxon_holm"])),
        ("significant", lambda r: "**yes**" if r["significant"] else "no"),
        ("note", lambda r: "; ".join(x for x in (r["note"], r["unpaired_seeds"]) if x)),
    ])


def _seeds_table(comparison: pd.DataFrame, labels: dict[float, str], axes: Sequence[str] = (),
                 arms: Arms = BN_PLAIN) -> str:
    order = comparison.assign(_m=comparison["metric"] != "test_acc")
    order = sort_by_scale(order, ["_m", "metric", *axes, "weight_scale"], descending=True)
    return markdown_table(order, [
        ("metric", lambda r: metric_label(r["metric"])),
        *_axis_columns(axes),
        ("W", lambda r: labels[r["weight_scale"]]),
        (f"n now {arms.short_a} / {arms.short_b} / pairs",
         lambda r: f"{int(r['n_bn'])} / {int(r['n_plain'])} / {int(r['n_pairs'])}"),
        (f"sd {arms.short_a}", lambda r: _fmt(r["sd_bn"], 4)),
        (f"sd {arms.short_b}", lambda r: _fmt(r["sd_plain"], 4)),
        ("sd diff", lambda r: _fmt(r["sd_diff"], 4)),
        (f"seeds for {arms.short_a}", lambda r: _fmt_n(r["seeds_needed_bn"])),
        (f"seeds for {arms.short_b}", lambda r: _fmt_n(r["seeds_needed_plain"])),
        ("seeds for the difference", lambda r: _fmt_n(r["seeds_needed_diff"])),
    ])


def _policy_section(comparison: pd.DataFrame, other: pd.DataFrame, policy: str,
                    labels: dict[float, str], axes: Sequence[str] = (), arms: Arms = BN_PLAIN) -> list[str]:
    """Cells whose comparison changes with the diverged policy: both versions side by side."""
    keys = [*axes, "weight_scale", "metric"]
    both = comparison.merge(other, on=keys, suffixes=("", "_other"))
    shown = ["n_pairs", "mean_diff", "ci_low", "ci_high", "cs_low", "cs_high", "significant"]
    differ = np.zeros(len(both), dtype=bool)
    for col in shown:
        a, b = both[col], both[f"{col}_other"]
        differ |= ~((a == b) | (a.isna() & b.isna())).to_numpy()
    changed = both[differ]
    other_policy = "exclude" if policy == "count" else "count"
    names = {"count": "diverged counted", "exclude": "diverged left out"}
    if changed.empty:
        return ["## Diverged trials: counted or left out", "",
                f"Every cell reads the same with --diverged {other_policy}.", ""]

    def side(r: pd.Series, suffix: str) -> str:
        pairs, diff = int(r[f"n_pairs{suffix}"]), r[f"mean_diff{suffix}"]
        sig = " **significant**" if r[f"significant{suffix}"] else ""
        return (f"{pairs} pairs: {_fmt(diff)} [{_fmt(r[f'ci_low{suffix}'])}, {_fmt(r[f'ci_high{suffix}'])}], CS "
                f"[{_fmt(r[f'cs_low{suffix}'])}, {_fmt(r[f'cs_high{suffix}'])}]{sig}")

    order = sort_by_scale(changed.assign(_m=changed["metric"] != "test_acc"), ["_m", *axes, "weight_scale"],
                          descending=True)
    table = markdown_table(order, [
        ("metric", lambda r: metric_label(r["metric"])),
        *_axis_columns(axes),
        ("W", lambda r: labels[r["weight_scale"]]),
        (f"{names[policy]} (this report)", lambda r: side(r, "")),
        (f"{names[other_policy]} (--diverged {other_policy})", lambda r: side(r, "_other")),
    ])
    return ["## Diverged trials: counted or left out", "",
            f"The cells that read differently with --diverged {other_policy} ({arms.diff}: mean [95% t "
            "interval], anytime-valid CS).", "", table, ""]


def build_report(
    *,
    experiment: str,
    tracking_uri: str,
    df: pd.DataFrame,
    comparison: pd.DataFrame,
    final: pd.DataFrame,
    figures: dict[str, str],
    curves_scale: float,
    metric: str,
    width: float,
    alpha: float,
    notes: Sequence[str] = (),
    diverged_policy: str = "count",
    other_comparison: pd.DataFrame | None = None,
    axes: Sequence[str] = (),
    arms: Arms = BN_PLAIN,
) -> str:
    """The whole report.md text. ``figures`` maps name (grid, curves, final_accuracy, difference; with ``axes``
    ``grid|<facet label>``) to a path relative to the report. ``other_comparison`` is the comparison under the
    other diverged policy: the cells where it differs get a section of their own. ``axes``: the hyperparameters
    with several values (:mod:`analysis.facets`), a column each in the tables."""
    scales = sort_scales(df["weight_scale"].unique())
    labels = scale_labels(scales)
    n_runs = df["run_id"].nunique()
    counts = final[final["metric"] == final["metric"].iloc[0]]["n"] if not final.empty else []
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Batch normalization across weight scales: `{experiment}`", ""]
    n_diverged = int(df.loc[df["diverged"], "run_id"].nunique()) if "diverged" in df else 0
    runs_text = f"{n_runs} trial runs ({n_diverged} of them diverged)" if n_diverged else \
        f"{n_runs} finished trial runs"
    out.append(f"Generated {now} from `{display_store(tracking_uri)}`, experiment `{experiment}` "
               f"(id {df.attrs.get('experiment_id', '?')}). {runs_text}: {len(scales)} weight "
               f"scales \u00d7 2 arms ({arms.a}, {arms.b}), {seeds_text(counts)}; {describe_data(df)}.")
    out += ["", "What every trial shares:", ""]
    out += [f"- {line}" for line in describe_setup(df)]
    out.append("")
    if axes:
        named = "; ".join(f"{axis_name(a)}: " + ", ".join(value_label(v) for v in sorted(df[a].unique()))
                          for a in axes)
        out += [f"Axes beside the weight scale, each combination analysed apart ({named}); the Holm correction and "
                "the confidence sequences' Bonferroni split span every compared cell of a metric.", ""]
    for note in notes:
        out.append(f"- {note}")
    if notes:
        out.append("")
    out += ["## Findings", "", facet_findings(comparison, final, axes, alpha=alpha, width=width, arms=arms), ""]
    out += ["## Figures", ""]
    titles = {
        "grid": f"{metric_label(metric).capitalize()} per weight scale (the book's Figure 6-19, mean \u00b1 1 std "
                f"over seeds; {arms.short_a} solid, {arms.short_b} dashed)",
        "curves": f"Train and test accuracy at {scale_phrase(curves_scale)}",
        "final_accuracy": "Final accuracy vs weight scale (mean, 95% t interval of the mean)",
        "difference": f"Paired difference {arms.diff} at the final epoch (thin bar: 95% t interval, * = "
                      "significant after Holm; wide bar: anytime-valid 95% confidence sequence)",
    }
    for name, path in figures.items():
        kind, _, facet = name.partition("|")  # "grid", or "grid|lr=0.1, optimizer=adam" for one facet's
        title = titles.get(kind, kind) + (f" \u2014 {facet}" if facet else "")
        out += [f"### {title}", "", f"![{kind}]({path})", ""]
    out += ["## Paired comparison at the final epoch", ""]
    for m in ("test_acc", "train_acc"):
        cm = comparison[comparison["metric"] == m]
        if not cm.empty:
            out += [f"### {metric_label(m).capitalize()}", "", _comparison_table(cm, labels, axes, arms), ""]
    if other_comparison is not None:
        out += _policy_section(comparison, other_comparison, diverged_policy, labels, axes, arms)
    out += [f"## Seeds needed for a 95% interval narrower than {width:g}", "",
            "The smallest n with 2 \u00b7 t(0.975, n\u22121) \u00b7 sd / \u221an \u2264 "
            f"{width:g}, from the sd observed now (\u2013 where fewer than 2 values).", "",
            _seeds_table(comparison, labels, axes, arms), ""]
    out += ["## Method", "",
            f"- One trial = one (weight scale, {arms.short_a} or {arms.short_b}, seed); the {arms.short_a} and "
            f"{arms.short_b} runs of a seed start from the same weights and see the same mini-batches, so they are "
            "compared as pairs.",
            "- Mean \u00b1 std over seeds (sample std, ddof = 1). Intervals are two-sided 95% t intervals of the "
            "mean; with one value there is none (marked n=1), never a zero-width band.",
            "- Paired comparison at each run's final epoch: seeds present in only one arm or NaN in either "
            "are dropped from the pairing and listed in the note. Paired t-test and Wilcoxon signed-rank "
            "test (scipy), each Holm-corrected across the compared cells of one metric (its weight scales, "
            "in every combination of the axes); \"significant\" "
            f"means Holm-corrected t-test p < {alpha:g}. If every difference is exactly 0 both p-values "
            "are set to 1; if every difference is the same non-zero value (no spread: all seeds equal) there is "
            "no t interval and no t-test.",
            "- Which interval to read: if the number of seeds was fixed before any result was looked at, the t "
            "interval and the Holm-corrected tests. If seeds were added after looking (the analysis rerun, then "
            "more seeds; or `--until-width` / `--until-decided`), only the anytime-valid confidence sequence (CS) "
            "and p anytime keep their promise: a 95% CS covers the true mean difference at every number of seeds "
            "at once, so stopping because of what it showed does not bias it. It is the betting CS of "
            "Waudby-Smith & Ramdas (JRSS-B 2024) for differences bounded in [\u22121, 1], read over the seeds in "
            "seed order from the smallest through the contiguous block with a run in both arms, simultaneous over "
            "the weight scales of one metric (Bonferroni: each at level alpha / scales; p anytime is multiplied by "
            "the number of scales). It is wider than the t interval; with few seeds it cannot exclude 0 however "
            "large the difference.",
            *(["- He init and Xavier init: every layer's initial weights drawn with std sqrt(2 / fan-in) (He et al. "
               "2015, for ReLU) or sqrt(1 / fan-in) (Glorot & Bengio 2010), fan-in being the layer's inputs; they "
               "are cells of their own beside the numeric scales W, in the tests' families."]
              if any(is_named(w) for w in scales) else []),
            f"- \"Failed to learn\": mean final train accuracy below {FAIL_THRESHOLD:.2f} (chance 0.10), said "
            f"only of an arm with at least {MIN_RUNS_TO_SAY} finished runs.",
            "- Only FINISHED runs tagged run_kind=trial are used, and the trials that diverged (FAILED with "
            "failure_reason 'diverged...'); of several runs of one trial key the earliest is used. "
            + ("Diverged trials are counted (--diverged count): a net whose loss became non-finite failed to "
               "learn, as the book's Figure 6-19 shows it, so its accuracy from that epoch to the last is the one "
               "measured there, the network's actual predictions (NaN scores predict class 0, near chance on "
               "balanced classes), or chance (0.10) where none was measured; its loss is missing from there."
               if diverged_policy == "count" else
               "Diverged trials are left out of the statistics (--diverged exclude) and counted apart."),
            "", "## Files", "",
            "- `summary.csv`: per weight scale, arm, metric and epoch: n, mean, std, sem, ci_low, ci_high, "
            "n_runs, note.",
            "- `comparison.csv`: per weight scale and metric: the paired statistics above, Holm-corrected "
            "p-values, seeds needed, and the confidence sequence (cs_n, cs_low, cs_high, p_anytime).",
            "- Figures as PNG and SVG.", ""]
    return "\n".join(out)
