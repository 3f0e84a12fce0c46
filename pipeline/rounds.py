"""Seeds until clear: after its grid, the sweep adds seeds in rounds to the cells whose answer is not yet clear.

A *cell* is one weight scale; its answer is the paired BN - plain difference of the final test accuracy. After each
round the sweep reads the store as ``python -m analysis`` does (diverged trials counted, :mod:`analysis.load`) and
computes each cell's anytime-valid 95% confidence sequence (:func:`analysis.stats.paired_comparison`, simultaneous
over the grid's scales). Because a confidence sequence stays valid however often it is looked at, stopping a cell
when it is clear does not bias its interval: that is what makes these rounds sound, where adding seeds until a
t-test's p-value dips below 0.05 is not.

A cell is clear when its sequence is narrower than ``--until-width`` (full width), or, with ``--until-decided``,
when it excludes 0 (BN better or worse at 95%). Each round gives every cell not yet clear the next ``step`` seeds
after its contiguous block (``step`` = the number of ``--seeds``), up to ``--max-seeds`` seeds per cell. The
decision depends only on what the store holds, so a rerun of the same command after Ctrl-C takes up the same rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.trials import make_grid, trial_key

METRIC = "test_acc"
ALPHA = 0.05
#: ``--max-seeds`` when it is not given: 50 seeds per cell, 1,600 trials for the book's 16 scales.
DEFAULT_MAX_SEEDS = 50

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Until:
    """When a cell is clear, and how seeds are added: from ``--until-width``, ``--until-decided``, ``--max-seeds``."""

    width: float | None
    decided: bool
    max_seeds: int
    first_seed: int
    step: int

    def describe(self) -> str:
        """The stopping rule in words."""
        parts = []
        if self.decided:
            parts.append("its 95% confidence sequence excludes 0")
        if self.width is not None:
            parts.append(f"it is narrower than {self.width:g}")
        return " or ".join(parts)


@dataclass(frozen=True)
class Assessment:
    """Each cell's state after a round, and the trials of the next round (empty when none is needed)."""

    table: pd.DataFrame  # weight_scale, seeds, mean_diff, cs_low, cs_high, width, status
    next_grid: list[dict]

    @property
    def unclear(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "not clear"]


def cell_grid(base: dict, scales: list[float], until: Until) -> list[dict]:
    """Every trial the rounds could ever run: both arms, seeds first_seed .. first_seed + max_seeds - 1."""
    seeds = range(until.first_seed, until.first_seed + until.max_seeds)
    return make_grid(base, scales, [True, False], list(seeds))


def assess(uri: str, experiment: str, base: dict, scales: list[float], until: Until) -> Assessment:
    """Read the store and decide, per cell, whether it is clear and which seeds the next round adds."""
    import pandas as pd

    from analysis.load import load_runs
    from analysis.stats import paired_comparison

    possible = cell_grid(base, scales, until)
    keys = {trial_key(c) for c in possible}
    df = load_runs(experiment, uri, metrics=(METRIC,), check_uri=False)
    df = df[df["trial_key"].isin(keys)] if len(df) else df
    comparison = paired_comparison(df, metrics=(METRIC,), alpha=ALPHA) if len(df) else pd.DataFrame()
    rows, next_seeds = [], {}
    for w in scales:
        cell = comparison[comparison["weight_scale"] == w] if len(comparison) else comparison
        found = not cell.empty
        n = int(cell["cs_n"].iloc[0]) if found else 0
        low = float(cell["cs_low"].iloc[0]) if found else float("nan")
        high = float(cell["cs_high"].iloc[0]) if found else float("nan")
        status = _status(low, high, n, until)
        rows.append({"weight_scale": w, "seeds": n, "mean_diff": float(cell["mean_diff"].iloc[0]) if found
                     else float("nan"), "cs_low": low, "cs_high": high, "width": high - low, "status": status})
        if status == "not clear":
            last = until.first_seed + until.max_seeds - 1
            next_seeds[w] = range(until.first_seed, min(until.first_seed + n - 1 + until.step, last) + 1)
    next_grid = [c for c in possible
                 if c["weight_scale"] in next_seeds and c["seed"] in next_seeds[c["weight_scale"]]]
    return Assessment(pd.DataFrame(rows), next_grid)


def _status(low: float, high: float, n: int, until: Until) -> str:
    if until.decided and (low > 0 or high < 0):
        return "excludes 0"
    if until.width is not None and high - low <= until.width:
        return f"narrower than {until.width:g}"
    if n >= until.max_seeds:
        return f"not clear at {until.max_seeds} seeds"
    return "not clear"


def table_text(assessment: Assessment) -> str:
    """The final table, one line per cell, largest scale first."""
    lines = [f"{'W':>8}  {'seeds':>5}  {'BN - plain':>10}  {'95% confidence sequence':>23}  {'width':>6}  status"]
    for r in assessment.table.sort_values("weight_scale", ascending=False).itertuples():
        cs = f"[{r.cs_low:+.3f}, {r.cs_high:+.3f}]" if r.seeds else "–"
        lines.append(f"{r.weight_scale:>8.4g}  {r.seeds:>5}  {r.mean_diff:>+10.3f}  {cs:>23}  "
                     f"{r.width:>6.3f}  {r.status}")
    return "\n".join(lines)
