"""Trials: what one trial is, its identity (the trial key), the grid of a sweep, and parsing of CLI values.

A trial is one (weight_scale, use_batchnorm, seed) with the sweep's fixed hyperparameters. Its config is a plain
JSON-able dict (see docs/design.md); the same dict is what the Ray task trains and what MLflow shows as params.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tracking.names import NAMED_SCALES, OPTIONAL_PARAMS

#: Bump when the meaning of a config field changes, so old runs are not mistaken for new trials.
TRIAL_SCHEMA = 1

#: The book's grid: 16 weight scales from 1 down to 1e-4, evenly spaced in log space.
DEFAULT_WEIGHT_SCALES: tuple[float, ...] = tuple(float(w) for w in np.logspace(0, -4, 16))

#: The order in which config fields are shown and logged as params.
PARAM_ORDER = (
    "weight_scale",
    "use_batchnorm",
    "seed",
    "dataset",
    "train_size",
    "test_size",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "hidden_size_list",
    "activation",
    "weight_decay",
    "dropout",
    "dtype",
)


class UsageError(ValueError):
    """A condition the user caused: the CLI prints ``<what> (<fix>)`` as one line and exits 2."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what} ({fix})" if fix else what)


def trial_key(config: dict) -> str:
    """Return the stable identity of a trial: a short hash of its full config (and the schema version)."""
    payload = dict(config, schema=TRIAL_SCHEMA)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scale_text(w: float | str) -> str:
    """A weight scale as run names and tags show it: ``0.01``, ``he``."""
    return w if isinstance(w, str) else f"{w:.4g}"


def axis_label(key: str) -> str:
    """How an axis is named in messages, tags and run names: its option without dashes (``lr``, ``hidden_sizes``)."""
    return "hidden_sizes" if key == "hidden_size_list" else key


def value_text(value) -> str:
    """A config value as tags and messages show it: ``0.1``, ``100,100``, ``adam``."""
    return ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) \
        else str(value)


def run_name(config: dict, axes: Sequence[str] = ()) -> str:
    """A readable MLflow run name, e.g. ``w=0.01 bn seed=3``, with the values of the sweep's other ``axes``
    (``w=0.01 bn seed=3 lr=0.1``)."""
    tags = cell_tags(config, axes)
    cell, _, extra = tags["cell"].partition(" ")
    return " ".join(p for p in (cell, tags["arm"], f"seed={config['seed']}", extra) if p)


def cell_tags(config: dict, axes: Sequence[str] = ()) -> dict[str, str]:
    """``cell`` (the compared cell: the weight scale and the values of the sweep's other ``axes``, e.g. ``w=0.01`` or
    ``w=0.01 lr=0.1``) and ``arm`` (``bn`` or ``plain``): group runs by them in MLflow's UI for one line per cell and
    arm."""
    extra = [f"{axis_label(k)}={value_text(config.get(k, OPTIONAL_PARAMS.get(k)))}" for k in axes]
    return {"cell": " ".join([f"w={scale_text(config['weight_scale'])}", *extra]),
            "arm": "bn" if config["use_batchnorm"] else "plain"}


def params_of(config: dict) -> dict[str, str]:
    """The config as MLflow params (strings that read well in the UI and parse back exactly)."""
    out: dict[str, str] = {}
    for name in (n for n in PARAM_ORDER if n in config):
        value = config[name]
        out[name] = repr(value) if isinstance(value, float) else str(value)
    return out


def make_grid(
    base: dict,
    weight_scales: Sequence[float | str],
    batchnorm: Sequence[bool],
    seeds: Sequence[int],
    axes: Mapping[str, Sequence] | None = None,
) -> list[dict]:
    """Every trial config of a sweep, ordered seed-major so that early results already pair both arms.

    ``base`` holds the fixed hyperparameters; ``axes`` the ones with several values (config key -> values), whose
    product the grid runs; each trial adds ``weight_scale`` (a number, or ``he``/``xavier``), ``use_batchnorm`` and
    ``seed``. A config lists its fields in ``PARAM_ORDER`` and leaves out those at their defaults
    (``tracking.names.OPTIONAL_PARAMS``: a trial of the default config keeps the trial key it had before they were
    axes, so nothing already FINISHED runs again).
    """
    axes = dict(axes or {})
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    trials = []
    for seed in seeds:
        for combo in combos:
            for w in weight_scales:
                for bn in batchnorm:
                    config = dict(base, **combo, weight_scale=w if isinstance(w, str) else float(w),
                                  use_batchnorm=bool(bn), seed=int(seed))
                    trials.append({name: config[name] for name in PARAM_ORDER if name in config
                                   and not (name in OPTIONAL_PARAMS and config[name] == OPTIONAL_PARAMS[name])})
    return trials


# --- parsing of CLI values -------------------------------------------------------------------------------


def _parts(option: str, text: str, example: str) -> list[str]:
    """The ,-separated values of ``option``, none of them empty."""
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise UsageError(f"{option} {text!r} has an empty value", f"give {option} a ,-separated list, e.g. "
                         f"{option} {example}")
    return parts


def parse_seeds(text: str, most: int = 1_000_000) -> list[int]:
    """Parse ``0-4``, ``0,3,7`` or a mix such as ``0-4,9`` into a sorted list of distinct seeds (at most ``most``,
    counted before any list is made)."""
    ranges = []
    for part in _parts("--seeds", text, "0-4,9"):
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise UsageError(f"--seeds {text!r}: {part!r} is not a seed or a range",
                             "give seeds as whole numbers from 0, e.g. --seeds 0-4 or --seeds 0,3,7") from None
        if lo < 0 or hi < 0:
            raise UsageError(f"--seeds {text!r}: {part!r} is negative", "give seeds from 0 up")
        if hi < lo:
            raise UsageError(f"--seeds {text!r}: range {part!r} is empty", "give a range as start-end, start <= end")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > most:
        raise UsageError(f"--seeds {text} gives {count:,} seeds; at most {most:,} fit in one sweep of this grid",
                         "run fewer seeds at a time: a sweep adds them to the ones already run")
    seeds: set[int] = set()
    for lo, hi in ranges:
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def parse_weight_scales(text: str) -> list[float | str]:
    """Parse a comma list of positive weight scales (standard deviations of the initial weights), or the names
    ``he`` and ``xavier`` (a std per layer from its fan-in)."""
    scales: list[float | str] = []
    for part in _parts("--weight-scales", text, "0.1,0.01"):
        if part.lower() in NAMED_SCALES:
            scales.append(part.lower())
            continue
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--weight-scales: {part!r} is not a number",
                             "give standard deviations like 0.1,0.01, or he or xavier") from None
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"--weight-scales: {part!r} must be a positive finite number",
                             "give standard deviations above 0, like 0.1,0.01")
        scales.append(value)
    return _distinct(scales)


def parse_batchnorm(text: str) -> list[bool]:
    """``on`` -> [True], ``off`` -> [False], ``both`` -> [True, False]."""
    choices = {"on": [True], "off": [False], "both": [True, False]}
    if text not in choices:
        raise UsageError(f"--batchnorm {text!r} is not a choice", "choose on, off or both")
    return choices[text]


def _distinct(values: Iterable[float]) -> list[float]:
    seen: list[float] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen
