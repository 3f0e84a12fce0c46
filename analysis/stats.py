"""Statistics over seeds: per-arm means with t intervals, the paired BN - plain comparison, seeds needed.

An *arm* is (weight_scale, use_batchnorm). A seed trains both arms of a weight scale with the same
initial weights and mini-batches (design.md), so the arms are compared pairwise by seed.

Conventions (the report repeats them):
- std is the sample standard deviation (ddof=1); intervals are two-sided t intervals of the mean,
  ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``; with n < 2 values they are NaN and the note says so.
- NaN values (diverged or missing) are left out: ``n`` counts the values actually used.
- The paired comparison uses each run's final epoch (its largest logged step). Seeds present in only
  one arm, or NaN in either, are dropped from the pairing and listed.
- p-values: paired t-test (``scipy.stats.ttest_rel``) and Wilcoxon signed-rank
  (``scipy.stats.wilcoxon``, default zero handling), each Holm-corrected across the weight scales
  of one metric (NaN p-values are not counted in the family). When every difference is exactly 0,
  both p-values are set to 1 (no evidence of a difference) and the note says so. When every difference is the
  same non-zero value (no spread: all seeds equal) there is no t interval and no t-test (its p would be 0 for
  any such difference); the note says so, and the Wilcoxon test is still made.
- Significant means Holm-corrected paired t-test p < alpha.
- Anytime-valid: beside the t interval, every cell gets a confidence sequence (CS) for its mean paired difference
  (:func:`analysis.sequences.difference_cs`, the betting CS over [-1, 1]), simultaneous over the weight scales of
  one metric by a Bonferroni split (each scale at alpha / scales), and the anytime p-value of "no difference"
  multiplied by the number of scales (``p_anytime``, capped at 1). It is computed over the seeds in seed order,
  from the cell's smallest seed through the contiguous block of seeds with a run in both arms (a seed still
  missing in one arm ends the block: seeds after it wait until it is there, so the order never depends on which
  trial finished first). Unlike the t interval and the p-values, it stays valid when seeds were added after
  looking at the results.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.scales import Scale
from analysis.sequences import difference_cs
from tracking.names import METRICS

CONFIDENCE = 0.95
ALPHA = 0.05
DEFAULT_WIDTH = 0.02
COMPARED_METRICS = ("train_acc", "test_acc")
ARM_KEYS = ["weight_scale", "use_batchnorm"]

NOTE_NO_VALUES = "no values"
NOTE_ONE_VALUE = "n=1: no interval"
NOTE_FEW_PAIRS = "fewer than 2 pairs: no interval, no test"
NOTE_ALL_ZERO = "all differences are 0: p-values set to 1"
NOTE_ZERO_SD = "no spread: all seeds equal (no t interval, no t-test)"
NOTE_NO_CS = "no seed block with both arms: no confidence sequence"


def t_quantile(n: np.ndarray | int, confidence: float = CONFIDENCE) -> np.ndarray:
    """``t_{(1+c)/2, n-1}``; NaN where n < 2."""
    n = np.asarray(n, dtype=float)
    out = np.full(n.shape, np.nan)
    ok = n >= 2
    out[ok] = sps.t.ppf(0.5 + confidence / 2, n[ok] - 1)
    return out


def _interval_columns(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Add sem, ci_low, ci_high, note to a frame with n, mean, std."""
    n = frame["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = frame["std"].to_numpy(dtype=float) / np.sqrt(n)
    half = t_quantile(n, confidence) * sem
    frame["sem"] = np.where(n >= 2, sem, np.nan)
    frame["ci_low"] = frame["mean"].to_numpy(dtype=float) - half
    frame["ci_high"] = frame["mean"].to_numpy(dtype=float) + half
    frame["note"] = np.where(n == 0, NOTE_NO_VALUES, np.where(n == 1, NOTE_ONE_VALUE, ""))
    return frame


def _long(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    present = [m for m in metrics if m in df]
    return df.melt(id_vars=[*ARM_KEYS, "seed", "run_id", "epoch"], value_vars=present,
                   var_name="metric", value_name="value")


def arm_summary(df: pd.DataFrame, metrics: Sequence[str] = METRICS,
                confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per (weight_scale, use_batchnorm, metric, epoch): n, mean, std (ddof=1), sem, t interval, note.

    ``n`` is the number of seeds with a non-NaN value at that epoch; ``n_runs`` counts the runs.
    """
    long = _long(df, metrics)
    grouped = long.groupby([*ARM_KEYS, "metric", "epoch"], sort=True)["value"]
    out = grouped.agg(n="count", mean="mean", std="std", n_runs="size").reset_index()  # pandas std: ddof=1
    out["n"] = out["n"].astype("int64")
    out["n_runs"] = out["n_runs"].astype("int64")
    out = _interval_columns(out, confidence)
    order = [*ARM_KEYS, "metric", "epoch", "n", "mean", "std", "sem", "ci_low", "ci_high", "n_runs", "note"]
    return out[order].sort_values([*ARM_KEYS, "metric", "epoch"], kind="mergesort").reset_index(drop=True)


def final_values(df: pd.DataFrame, metrics: Sequence[str] = METRICS
                 ) -> pd.DataFrame:
    """One row per run: its final epoch (largest logged step) and the metric values there."""
    last = df.groupby("run_id", sort=False)["epoch"].transform("max")
    present = [m for m in metrics if m in df]
    out = df.loc[df["epoch"] == last, ["run_id", *ARM_KEYS, "seed", "epoch", *present]]
    return out.rename(columns={"epoch": "final_epoch"}).reset_index(drop=True)


def seeds_needed(std: float, width: float = DEFAULT_WIDTH, confidence: float = CONFIDENCE,
                 max_n: int = 10**7) -> float:
    """Smallest n >= 2 with ``2 * t_{(1+c)/2, n-1} * std / sqrt(n) <= width`` (NaN if std is NaN).

    The full width of the t interval of a mean of n values with spread ``std``. Returns ``inf`` if
    even ``max_n`` is not enough.
    """
    if width <= 0:
        raise ValueError("width must be positive")
    if std is None or not np.isfinite(std):
        return math.nan
    if std == 0:
        return 2.0
    q = 0.5 + confidence / 2
    # t > z, so the normal-theory n is a lower bound: start there and step up
    n = max(2, math.floor((2 * sps.norm.ppf(q) * std / width) ** 2))
    while n <= max_n:
        if 2 * sps.t.ppf(q, n - 1) * std / math.sqrt(n) <= width:
            return float(n)
        n += 1
    return math.inf


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _paired_test(diff: np.ndarray, bn: np.ndarray, plain: np.ndarray) -> tuple[float, float, list[str]]:
    """(p t-test, p Wilcoxon, notes) for paired differences."""
    if diff.size < 2:
        return math.nan, math.nan, []
    if np.all(diff == 0):
        return 1.0, 1.0, [NOTE_ALL_ZERO]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_w = float(sps.wilcoxon(diff).pvalue)
        if no_spread(diff):
            return math.nan, p_w, [NOTE_ZERO_SD]
        p_t = float(sps.ttest_rel(bn, plain).pvalue)
    return p_t, p_w, []


def no_spread(values: np.ndarray) -> bool:
    """At least two values, all equal: a sample with no spread (no t interval, no t-test)."""
    return values.size >= 2 and bool(np.all(values == values[0]))


def _seed_list(seeds) -> str:
    return ",".join(str(int(s)) for s in sorted(seeds))


def paired_comparison(
    df: pd.DataFrame,
    metrics: Sequence[str] = COMPARED_METRICS,
    *,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    width: float = DEFAULT_WIDTH,
    family: int | None = None,
) -> pd.DataFrame:
    """Per (weight_scale, metric): the paired BN - plain comparison at each run's final epoch.

    ``family``: the number of cells the confidence sequences of a metric are simultaneous over (default: the weight
    scales of ``df``; :func:`analysis.facets.comparison_by_facet` passes the cells of every facet).

    Columns: weight_scale, metric, final_epoch, n_bn, n_plain (seeds with a value), mean_bn, sd_bn,
    mean_plain, sd_plain (over all seeds of the arm), n_pairs, mean_diff, sd_diff, ci_low, ci_high
    (t interval of the mean paired difference), p_ttest, p_wilcoxon, their Holm-corrected versions
    p_ttest_holm, p_wilcoxon_holm (family: the weight scales of one metric), significant
    (p_ttest_holm < alpha), seeds_needed_bn, seeds_needed_plain, seeds_needed_diff (seeds for a
    full interval width <= ``width``, from the observed sd), cs_n (pairs in the seed block of the confidence
    sequence), cs_low, cs_high (the anytime-valid CS of the mean difference at level 1 - alpha, simultaneous over
    the scales of a metric), p_anytime (its anytime p-value of "no difference", Bonferroni-multiplied),
    unpaired_seeds, note.
    """
    finals = final_values(df, metrics)
    rows = []
    n_scales = family or max(finals["weight_scale"].nunique(), 1)
    for metric in [m for m in metrics if m in finals]:
        for w, group in finals.groupby("weight_scale", sort=True):
            row = _compare_one(group, w, metric, confidence, width)
            row.update(_sequence_columns(group, metric, alpha, n_scales, row))
            rows.append(row)
    columns = ["weight_scale", "metric", "final_epoch", "n_bn", "n_plain", "mean_bn", "sd_bn", "mean_plain",
               "sd_plain", "n_pairs", "mean_diff", "sd_diff", "ci_low", "ci_high", "p_ttest", "p_wilcoxon",
               "p_ttest_holm", "p_wilcoxon_holm", "significant", "seeds_needed_bn", "seeds_needed_plain",
               "seeds_needed_diff", "cs_n", "cs_low", "cs_high", "p_anytime", "unpaired_seeds", "note"]
    out = pd.DataFrame(rows, columns=[c for c in columns if c not in
                                      ("p_ttest_holm", "p_wilcoxon_holm", "significant")])
    out["p_ttest_holm"] = np.nan
    out["p_wilcoxon_holm"] = np.nan
    for idx in out.groupby("metric", sort=False).groups.values():
        out.loc[idx, "p_ttest_holm"] = holm(out.loc[idx, "p_ttest"])
        out.loc[idx, "p_wilcoxon_holm"] = holm(out.loc[idx, "p_wilcoxon"])
    out["significant"] = (out["p_ttest_holm"] < alpha).astype(bool)
    for col in ("n_bn", "n_plain", "n_pairs", "final_epoch", "cs_n"):
        out[col] = out[col].astype("int64")
    return out[columns]


def _compare_one(group: pd.DataFrame, w: Scale, metric: str, confidence: float, width: float) -> dict:
    arms = {}
    nan_seeds = []
    for bn in (True, False):
        arm = group[group["use_batchnorm"] == bn]
        values = arm.set_index("seed")[metric]
        nan_seeds += [f"{'bn' if bn else 'plain'} {int(s)}" for s in values.index[values.isna()]]
        arms[bn] = values.dropna()
    bn, plain = arms[True], arms[False]
    common = bn.index.intersection(plain.index).sort_values()
    only_bn = bn.index.difference(plain.index)
    only_plain = plain.index.difference(bn.index)
    b = bn.loc[common].to_numpy(dtype=float)
    p = plain.loc[common].to_numpy(dtype=float)
    diff = b - p
    n_pairs = int(diff.size)

    notes = []
    unpaired = []
    if len(only_bn):
        unpaired.append(f"bn only: {_seed_list(only_bn)}")
    if len(only_plain):
        unpaired.append(f"plain only: {_seed_list(only_plain)}")
    if unpaired:
        notes.append("unpaired seeds dropped from the pairing")
    if nan_seeds:
        notes.append("NaN final value dropped: " + ", ".join(nan_seeds))

    mean_diff = float(diff.mean()) if n_pairs else math.nan
    sd_diff = float(diff.std(ddof=1)) if n_pairs >= 2 else math.nan
    if no_spread(diff) and mean_diff != 0:  # the same non-zero difference from every seed
        ci = (math.nan, math.nan)
    elif n_pairs >= 2:
        half = float(t_quantile(n_pairs, confidence)) * sd_diff / math.sqrt(n_pairs)
        ci = (mean_diff - half, mean_diff + half)
    else:
        ci = (math.nan, math.nan)
        notes.append(NOTE_FEW_PAIRS)
    p_t, p_w, test_notes = _paired_test(diff, b, p)
    notes += test_notes

    sd_bn = float(bn.std(ddof=1)) if len(bn) >= 2 else math.nan
    sd_plain = float(plain.std(ddof=1)) if len(plain) >= 2 else math.nan
    return {
        "weight_scale": w, "metric": metric, "final_epoch": int(group["final_epoch"].max()),
        "n_bn": len(bn), "n_plain": len(plain),
        "mean_bn": float(bn.mean()) if len(bn) else math.nan, "sd_bn": sd_bn,
        "mean_plain": float(plain.mean()) if len(plain) else math.nan, "sd_plain": sd_plain,
        "n_pairs": n_pairs, "mean_diff": mean_diff, "sd_diff": sd_diff, "ci_low": ci[0], "ci_high": ci[1],
        "p_ttest": p_t, "p_wilcoxon": p_w,
        "seeds_needed_bn": seeds_needed(sd_bn, width, confidence),
        "seeds_needed_plain": seeds_needed(sd_plain, width, confidence),
        "seeds_needed_diff": seeds_needed(sd_diff, width, confidence),
        "unpaired_seeds": "; ".join(unpaired),
        "note": "; ".join(notes),
    }


def seed_block(seeds_bn, seeds_plain) -> list[int]:
    """The seeds a confidence sequence reads, in order: from the smallest seed of either arm, each next integer
    seed while it has a run in both arms (empty if the smallest has not)."""
    both = set(int(s) for s in seeds_bn) & set(int(s) for s in seeds_plain)
    every = set(int(s) for s in seeds_bn) | set(int(s) for s in seeds_plain)
    block = []
    seed = min(every) if every else 0
    while seed in both:
        block.append(seed)
        seed += 1
    return block


def _block_differences(group: pd.DataFrame, metric: str) -> tuple[list[int], np.ndarray]:
    """The seed block of one cell (final values of one weight scale) and its non-NaN differences, in seed order."""
    arms = {bn: group[group["use_batchnorm"] == bn].set_index("seed")[metric] for bn in (True, False)}
    block = seed_block(arms[True].index, arms[False].index)
    diff = (arms[True].reindex(block) - arms[False].reindex(block)).dropna().to_numpy(dtype=float)
    return block, diff


def _sequence_columns(group: pd.DataFrame, metric: str, alpha: float, n_scales: int, row: dict) -> dict:
    """cs_n, cs_low, cs_high, p_anytime of one cell (see the module docstring); extends ``row['note']``."""
    block, diff = _block_differences(group, metric)
    notes = [row["note"]] if row["note"] else []
    if diff.size == 0:
        notes.append(NOTE_NO_CS)
        cs = {"cs_n": 0, "cs_low": math.nan, "cs_high": math.nan, "p_anytime": math.nan}
    else:
        seq = difference_cs(np.clip(diff, -1.0, 1.0), alpha / n_scales)
        cs = {"cs_n": int(diff.size), "cs_low": float(seq["cs_low"][-1]), "cs_high": float(seq["cs_high"][-1]),
              "p_anytime": min(1.0, n_scales * float(seq["p_anytime"][-1]))}
        if diff.size < row["n_pairs"]:
            notes.append(f"confidence sequence over seeds {block[0]}-{block[-1]} ({diff.size} of "
                         f"{row['n_pairs']} pairs: a later seed waits for a missing one)")
    return {**cs, "note": "; ".join(notes)}


def interval_history(df: pd.DataFrame, metrics: Sequence[str] = COMPARED_METRICS, *,
                     confidence: float = CONFIDENCE, alpha: float = ALPHA, family: int | None = None) -> pd.DataFrame:
    """How each cell's intervals narrowed as seeds were added: per (weight_scale, metric) and n = 1..cs_n (the
    first n pairs of its seed block), ``mean_diff``, the t interval ``ci_low``/``ci_high`` of those n pairs (NaN
    for n < 2, or the same non-zero difference from every seed) and the confidence sequence ``cs_low``/``cs_high``
    after n pairs (as in :func:`paired_comparison`, simultaneous over the scales). Only the CS may be read at every
    n."""
    finals = final_values(df, metrics)
    n_scales = family or max(finals["weight_scale"].nunique(), 1)
    frames = []
    for metric in [m for m in metrics if m in finals]:
        for w, group in finals.groupby("weight_scale", sort=True):
            _, diff = _block_differences(group, metric)
            if diff.size == 0:
                continue
            seq = difference_cs(np.clip(diff, -1.0, 1.0), alpha / n_scales)
            n = seq["n"]
            sd = pd.Series(diff).expanding().std(ddof=1).to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                no_spread_ = (sd == 0) & (seq["mean_diff"] != 0)  # as paired_comparison: no t interval
                half = t_quantile(n, confidence) * np.where(no_spread_, np.nan, sd) / np.sqrt(n)
            frames.append(pd.DataFrame({"weight_scale": w, "metric": metric, "n": n,
                                        "mean_diff": seq["mean_diff"], "ci_low": seq["mean_diff"] - half,
                                        "ci_high": seq["mean_diff"] + half, "cs_low": seq["cs_low"],
                                        "cs_high": seq["cs_high"]}))
    columns = ["weight_scale", "metric", "n", "mean_diff", "ci_low", "ci_high", "cs_low", "cs_high"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def final_summary(df: pd.DataFrame, metrics: Sequence[str] = COMPARED_METRICS,
                  confidence: float = CONFIDENCE, width: float = DEFAULT_WIDTH) -> pd.DataFrame:
    """Per (weight_scale, use_batchnorm, metric) at each run's final epoch: n, mean, std, t interval,
    note and ``seeds_needed`` (for a full interval width <= ``width``)."""
    finals = final_values(df, metrics)
    long = finals.melt(id_vars=[*ARM_KEYS, "seed", "final_epoch"],
                       value_vars=[m for m in metrics if m in finals], var_name="metric", value_name="value")
    grouped = long.groupby([*ARM_KEYS, "metric"], sort=True)
    out = grouped["value"].agg(n="count", mean="mean", std="std").reset_index()  # pandas std: ddof=1
    out["final_epoch"] = grouped["final_epoch"].max().to_numpy()
    out["n"] = out["n"].astype("int64")
    out = _interval_columns(out, confidence)
    out["seeds_needed"] = [seeds_needed(s, width, confidence) for s in out["std"]]
    return out


def seeds_per_arm(df: pd.DataFrame, metric: str) -> pd.Series:
    """Seeds with a non-NaN final ``metric`` value, per arm (index: weight_scale, use_batchnorm)."""
    finals = final_values(df, [metric])
    return finals.groupby(ARM_KEYS)[metric].count()
