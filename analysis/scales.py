"""Weight scales: a number (the std of every layer's initial weights) or a name (a std per layer from its fan-in).

The sweep's ``--weight-scales`` takes both: ``0.01`` draws every weight from N(0, 0.01^2); ``he`` uses
sqrt(2 / fan_in) (He et al. 2015, for ReLU) and ``xavier`` sqrt(1 / fan_in) (Glorot & Bengio 2010). The tidy frame
keeps the param as it is: its ``weight_scale`` column holds floats, and, when a store has runs of a named scale,
those names beside them (an object column). Numbers sort before names; names sort in the order of
``tracking.names.NAMED_SCALES``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from tracking.names import NAMED_SCALES

NAMED_LABELS = {"he": "He", "xavier": "Xavier"}

Scale = float | str


def is_named(w: Scale) -> bool:
    return isinstance(w, str)


def parse_scale(text: str) -> Scale:
    """A run's weight_scale param: a positive finite number, or one of the named scales; else ValueError."""
    name = str(text).strip().lower()
    if name in NAMED_SCALES:
        return name
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"weight_scale {text!r} is neither a positive number nor one of {', '.join(NAMED_SCALES)}")
    return value


def sort_scales(scales: Iterable[Scale], *, descending: bool = False) -> list[Scale]:
    """Distinct scales: the numbers ascending (``descending``: largest first), then the names."""
    values = set(scales)
    numbers = sorted((float(w) for w in values if not is_named(w)), reverse=descending)
    return [*numbers, *(n for n in NAMED_SCALES if n in values)]


def scale_ranks(scales: Iterable[Scale], *, descending: bool = False) -> dict[Scale, int]:
    """Each distinct scale's position in :func:`sort_scales` order."""
    return {w: i for i, w in enumerate(sort_scales(scales, descending=descending))}


def as_scale(w) -> Scale:
    """A value of a weight_scale column as a plain Python value: its name, or a float."""
    return w if is_named(w) else float(w)


def scale_phrase(w: Scale) -> str:
    """One scale in a sentence: ``W=0.01``, ``He init``."""
    return f"{NAMED_LABELS[w]} init" if is_named(w) else f"W={scale_labels([w])[w]}"


def numeric_scales(scales: Iterable[Scale]) -> list[float]:
    return [w for w in sort_scales(scales) if not is_named(w)]


def named_scales(scales: Iterable[Scale]) -> list[str]:
    return [w for w in sort_scales(scales) if is_named(w)]


def scale_order(column: pd.Series, *, descending: bool = False) -> pd.Series:
    """Sort key of a weight_scale column (for ``DataFrame.sort_values(key=...)``): the position in
    :func:`sort_scales` order; any other column is returned as it is."""
    if column.name != "weight_scale":
        return column
    return column.map(scale_ranks(column.unique(), descending=descending))


def sort_by_scale(df: pd.DataFrame, by: Sequence[str], *, descending: bool = False) -> pd.DataFrame:
    """``df`` sorted (stably) by the columns ``by``, weight_scale among them in :func:`sort_scales` order."""
    return df.sort_values(list(by), kind="mergesort", key=lambda c: scale_order(c, descending=descending))


def same_scale(column: pd.Series, w: Scale) -> pd.Series:
    """Rows of ``column`` that hold the scale ``w`` (numbers compared to 12 significant digits)."""
    if is_named(w):
        return column.map(lambda v: v == w).astype(bool)
    return column.map(lambda v: not is_named(v) and math.isclose(float(v), float(w), rel_tol=1e-12)).astype(bool)


def _fmt_scale(w: float, digits: int) -> str:
    if w >= 0.1:
        return f"{w:.{digits}f}"
    return f"{w:.{digits}g}"


def scale_labels(scales: Iterable[Scale]) -> dict[Scale, str]:
    """Short distinct labels for weight scales: ``1.00``, ``0.54``, ``0.01``, ``0.0001``, ``0.0068``; ``He``,
    ``Xavier``."""
    scales = sort_scales(scales)
    numbers = [w for w in scales if not is_named(w)]
    labels: dict[Scale, str] = {w: NAMED_LABELS[w] for w in scales if is_named(w)}
    for digits in range(2, 17):
        found = {w: _fmt_scale(w, digits) for w in numbers}
        if len(set(found.values())) == len(numbers):
            return {**found, **labels}
    return {**{w: repr(w) for w in numbers}, **labels}


def nearest_scale(scales: Sequence[Scale], target: float = 0.01) -> Scale:
    """The numeric scale closest to ``target`` in log space; on a tie the larger scale. With no numeric scale, the
    first named one.

    (The book's 16 scales tie around 0.01: 0.0074 and 0.0136 are both 10^(2/15) away.)
    """
    values = numeric_scales(scales)
    if not values:
        names = named_scales(scales)
        if not names:
            raise ValueError("no weight scales")
        return names[0]
    return min(values, key=lambda w: (round(abs(math.log(w) - math.log(target)), 9), -w))
