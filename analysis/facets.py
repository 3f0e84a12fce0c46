"""Facets: a sweep over more hyperparameters than the weight scale, analysed one combination of them at a time.

An *axis* is a hyperparameter param (lr, optimizer, ...) that takes more than one value among the runs; a *facet* is
one combination of the axes' values. The statistics of :mod:`analysis.stats` run per facet and are put together
with a column per axis; the paired tests' families then span every compared cell of a metric (all scales of all
facets): Holm's correction and the Bonferroni split of the confidence sequences count them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.stats import holm

#: The params ``--compare`` can pair (every axis of a sweep but the weight scale itself).

#: The trial params a sweep can vary beside weight_scale, use_batchnorm and seed (pipeline/axes.py), in its order;
#: ``batchnorm`` is use_batchnorm become an axis when ``--compare`` pairs another one (:func:`compare_frame`).
AXIS_PARAMS = ("batchnorm", "train_size", "epochs", "batch_size", "lr", "optimizer", "hidden_size_list", "activation",
               "weight_decay", "dropout")


def axes_of(df: pd.DataFrame) -> list[str]:
    """The axis params that take more than one value in ``df``, in :data:`AXIS_PARAMS` order."""
    return [p for p in AXIS_PARAMS if p in df and df[p].nunique(dropna=False) > 1]


def axis_name(axis: str) -> str:
    """An axis as the sweep's option names it: ``lr``, ``hidden_sizes``."""
    return "hidden_sizes" if axis == "hidden_size_list" else axis


def value_label(value) -> str:
    """An axis value as labels show it: ``0.1``, ``adam``."""
    return f"{value:g}" if isinstance(value, float | np.floating) else str(value)


def facet_label(facet: dict) -> str:
    """``lr=0.1, optimizer=adam`` (empty for the one facet of a sweep without axes)."""
    return ", ".join(f"{axis_name(k)}={value_label(v)}" for k, v in facet.items())


def facet_slug(facet: dict) -> str:
    """A file-name part: ``lr-0.1_optimizer-adam``."""
    text = "_".join(f"{axis_name(k)}-{value_label(v)}" for k, v in facet.items())
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def facets(df: pd.DataFrame, axes: list[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """``(facet, its rows)`` for every combination of the axes' values present, in sorted order."""
    if not axes:
        yield {}, df
        return
    for values, part in df.groupby(axes, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        sub = part.reset_index(drop=True)
        sub.attrs = dict(df.attrs)
        yield dict(zip(axes, values, strict=True)), sub


def by_facet(df: pd.DataFrame, axes: list[str], fn: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """``fn`` of every facet, put together with a leading column per axis."""
    parts = []
    for facet, part in facets(df, axes):
        out = fn(part)
        for i, (axis, value) in enumerate(facet.items()):
            out.insert(i, axis, value)
        parts.append(out)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def count_cells(df: pd.DataFrame, axes: list[str]) -> int:
    """The compared cells of a metric: the weight scales of every facet (the size of the tests' families)."""
    return sum(part["weight_scale"].nunique() for _, part in facets(df, axes))


def comparison_by_facet(df: pd.DataFrame, axes: list[str], compare: Callable[..., pd.DataFrame], *,
                        alpha: float, **kwargs) -> pd.DataFrame:
    """:func:`analysis.stats.paired_comparison` per facet, with the families of all facets together: the Holm
    correction over every cell of a metric, and each confidence sequence at alpha / (cells of its metric)."""
    cells = count_cells(df, axes)
    out = by_facet(df, axes, lambda part: compare(part, alpha=alpha, family=cells, **kwargs))
    if out.empty or not axes:
        return out
    for idx in out.groupby("metric", sort=False).groups.values():
        out.loc[idx, "p_ttest_holm"] = holm(out.loc[idx, "p_ttest"])
        out.loc[idx, "p_wilcoxon_holm"] = holm(out.loc[idx, "p_wilcoxon"])
    out["significant"] = (out["p_ttest_holm"] < alpha).astype(bool)
    return out


def parse_compare(text: str) -> tuple[str, str, str]:
    """``AXIS=a,b`` -> (param, a, b), checked as text (what the store holds is checked by :func:`compare_frame`)."""
    names = {axis_name(p): p for p in AXIS_PARAMS[1:]}
    fix = f"give --compare AXIS=a,b with AXIS one of {', '.join(names)}, e.g. --compare optimizer=sgd,adam"
    axis, eq, values = text.partition("=")
    parts = [v.strip() for v in values.split(",")] if eq else []
    if axis.strip() not in names:
        raise AnalysisError(f"--compare {text!r} names no axis ({fix})")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise AnalysisError(f"--compare {text!r} needs two different values ({fix})")
    return names[axis.strip()], parts[0], parts[1]


def _matches(column: pd.Series, text: str) -> np.ndarray:
    """Rows whose value is ``text``: numerically for a number column (``0.10`` is 0.1), else as written."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        try:
            return np.isclose(column.to_numpy(dtype=float), float(text), rtol=1e-12, atol=0)
        except ValueError:
            return np.zeros(len(column), dtype=bool)
    return (column.astype(str) == text).to_numpy()


def compare_frame(df: pd.DataFrame, axis: str, a: str, b: str) -> pd.DataFrame:
    """The rows of ``axis`` = a (arm a, in the ``use_batchnorm`` slot as True) and = b (False), paired by seed
    with all else equal: the old use_batchnorm becomes the axis ``batchnorm``, and ``axis`` leaves the frame."""
    if axis not in df:
        raise AnalysisError(f"--compare {axis_name(axis)}: the runs have no param {axis} (compare an axis the "
                            "sweep varied)")
    present = ", ".join(sorted({value_label(v) for v in df[axis].dropna().unique()}))
    in_a, in_b = _matches(df[axis], a), _matches(df[axis], b)
    for value, rows in ((a, in_a), (b, in_b)):
        if not rows.any():
            raise AnalysisError(f"--compare {axis_name(axis)}={a},{b}: no run has {axis_name(axis)}={value} "
                                f"(the runs have {present})")
    out = df[in_a | in_b].copy()
    out["batchnorm"] = out["use_batchnorm"]
    out["use_batchnorm"] = in_a[in_a | in_b]
    out = out.drop(columns=[axis]).reset_index(drop=True)
    out.attrs = {**df.attrs, "compare": (axis, a, b)}
    return out
