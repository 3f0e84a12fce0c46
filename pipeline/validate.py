"""The one validation step of ``python -m pipeline.sweep``: every option, before Ray starts and before any write.

Each check covers a class of cases (type, range, feasibility: a grid or a net that cannot fit, a split smaller than
the samples asked for), and every user-caused condition is a :class:`UsageError` whose message says what is wrong
and, in parentheses, the fix: one line, exit 2.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipeline.axes import AXES, parse_axis
from pipeline.data import DatasetError, split_sizes
from pipeline.rounds import DEFAULT_MAX_SEEDS, Until
from pipeline.trials import (
    DEFAULT_WEIGHT_SCALES,
    UsageError,
    make_grid,
    parse_batchnorm,
    parse_seeds,
    parse_weight_scales,
)
from tracking.uri import Store, StoreError, check_experiment_name, check_store, resolve_tracking_uri

AXIS_OPTIONS = {axis.key: axis.option for axis in AXES}
#: A grid larger than this is refused: each trial is one MLflow run (a million runs is beyond any UI or analysis).
MAX_TRIALS = 1_000_000
MAX_WORKERS = 4096
#: What one Ray worker process takes before it trains anything (resident; benchmarks/bench_memory.py: 160 MB).
WORKER_BYTES = 160 * 2**20
INPUT_WIDTH, OUTPUT_WIDTH = 784, 10
#: Arrays an optimizer keeps per parameter, beyond the parameter and its gradient.
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "adagrad": 1, "adam": 2}
GIB = 2**30


@dataclass(frozen=True)
class Checked:
    """A checked command line: the fixed hyperparameters, the trials, the tracking URI and what it names."""

    base: dict
    grid: list[dict]
    uri: str
    store: Store
    scales: list[float | str]
    until: Until | None = None
    axes: dict = field(default_factory=dict)  # the hyperparameters with several values: config key -> values


def _positive(option: str, value: float, *, high: float = math.inf) -> None:
    if not (math.isfinite(value) and 0 < value <= high):
        bound = f" and at most {high:g}" if math.isfinite(high) else ""
        raise UsageError(f"{option} {value:g} is out of range", f"give {option} a number above 0{bound}")


def check_numbers(args: argparse.Namespace) -> None:
    """The sizes and times of the sweep itself: positive, finite, within what a sweep can use (the hyperparameters'
    values: :mod:`pipeline.axes`)."""
    if args.test_size < 1:
        raise UsageError(f"--test-size {args.test_size} is out of range",
                         "give --test-size a whole number of at least 1")
    _positive("--flush-seconds", args.flush_seconds, high=3600)
    _positive("--orphan-timeout", args.orphan_timeout)
    _positive("--connect-timeout", args.connect_timeout, high=3600)
    if not (math.isfinite(args.tracking_retry) and 0 <= args.tracking_retry <= 86_400):
        raise UsageError(f"--tracking-retry {args.tracking_retry:g} is out of range",
                         "give --tracking-retry seconds from 0 to 86400")
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers {args.workers} is out of range", f"give --workers from 1 to {MAX_WORKERS}")


def trial_bytes(base: dict) -> int:
    """An estimate from above of the memory one trial needs: its data, its parameters with their gradients and
    optimizer state, and the activations of its largest pass (inference over both splits at once)."""
    itemsize = 4 if base["dtype"] == "float32" else 8
    layers = [INPUT_WIDTH, *base["hidden_size_list"], OUTPUT_WIDTH]
    params = sum(a * b + 3 * b for a, b in zip(layers, layers[1:], strict=False))  # W, b, BN's gamma and beta
    rows = max(base["train_size"] + base["test_size"], base["batch_size"])
    activations = rows * sum(layers) * 4  # affine out, BN's centred and normalised values, the ReLU mask
    data = (base["train_size"] + base["test_size"]) * (INPUT_WIDTH + 1)
    return itemsize * (params * (2 + OPTIMIZER_STATE.get(base["optimizer"], 2)) + activations + data)


def check_feasible(base: dict, workers: int | None, axes: dict | None = None) -> None:
    """The largest trial of the grid fits in this machine's memory, and ``--workers`` of them at once."""
    total = psutil.virtual_memory().total
    sized = [k for k in ("hidden_size_list", "train_size", "batch_size", "optimizer") if k in (axes or {})]
    trials = [dict(base, **dict(zip(sized, values, strict=True)))
              for values in itertools.product(*(axes[k] for k in sized))] if sized else [base]
    need, base = max((trial_bytes(t), t) for t in trials) if len(trials) > 1 else (trial_bytes(base), base)
    widths = ",".join(map(str, base["hidden_size_list"]))
    if need > total:
        raise UsageError(f"a trial with hidden sizes {widths} needs about {need / GIB:,.1f} GiB; this machine has "
                         f"{total / GIB:.1f} GiB", "give smaller --hidden-sizes, --train-size or --test-size")
    if workers is not None and workers * (WORKER_BYTES + need) > total:
        most = max(1, total // (WORKER_BYTES + need))
        raise UsageError(f"--workers {workers} need about {workers * (WORKER_BYTES + need) / GIB:,.1f} GiB of "
                         f"this machine's {total / GIB:.1f} GiB", f"give --workers {most} or fewer")


def check_data(args: argparse.Namespace, base: dict, axes: dict | None = None) -> None:
    """The data's folder exists, and its splits hold the samples asked for (read from the files' headers; the
    content is verified as it is loaded)."""
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder", "name the folder that holds the IDX files")
    try:
        n_train, n_test = split_sizes(args.dataset, args.data_dir)
    except DatasetError as exc:
        raise dataset_usage_error(exc) from None
    train_size = max((axes or {}).get("train_size", [base.get("train_size", 0)]))
    for option, want, have, split in (("--train-size", train_size, n_train, "training"),
                                      ("--test-size", base["test_size"], n_test, "test")):
        if want > have:
            raise UsageError(f"{option} {want} is larger than the {args.dataset} {split} split ({have} samples)",
                             f"give {option} {have} or less")


def dataset_usage_error(exc: Exception) -> UsageError:
    """A :class:`DatasetError` (``<what>; <fix>``) as a usage error (``<what> (<fix>)``)."""
    what, _, fix = str(exc).partition("; ")
    return UsageError(what, fix or "see --dataset and --data-dir")


def check_args(args: argparse.Namespace) -> Checked:
    """Check the whole command line; :class:`UsageError` on the first problem. Reads, never writes."""
    check_numbers(args)
    base = {"dataset": args.dataset, "test_size": args.test_size, "dtype": args.dtype}
    axes = {}
    for axis in AXES:  # one value: a fixed hyperparameter; several: an axis of the grid
        values = parse_axis(axis, getattr(args, axis.dest))
        if len(values) == 1:
            base[axis.key] = values[0]
        else:
            axes[axis.key] = values
    scales = parse_weight_scales(args.weight_scales) if args.weight_scales is not None else DEFAULT_WEIGHT_SCALES
    arms = parse_batchnorm(args.batchnorm)
    cells = len(scales) * len(arms) * math.prod(len(v) for v in axes.values())
    if cells > MAX_TRIALS:
        raise UsageError(f"the grid has {cells:,} cells before seeds; at most {MAX_TRIALS:,} trials fit in one sweep",
                         "give fewer values to --weight-scales or the hyperparameters")
    seeds = parse_seeds(args.seeds, most=MAX_TRIALS // cells)
    until = check_until(args, scales, arms, seeds, axes)
    check_feasible(base, args.workers, axes)
    check_data(args, base, axes)
    try:
        check_experiment_name(args.experiment)
        uri = resolve_tracking_uri(args.tracking_uri)
        store = check_store(uri, write=True)
    except StoreError as exc:
        raise UsageError(exc.what, exc.fix) from None
    return Checked(base=base, grid=make_grid(base, scales, arms, seeds, axes), uri=uri, store=store, scales=scales,
                   until=until, axes=axes)


def check_until(args: argparse.Namespace, scales: list, arms: list[bool], seeds: list[int],
                axes: dict | None = None) -> Until | None:
    """``--until-width``, ``--until-decided``, ``--max-seeds``: a rule that can be met by a grid of both arms, within
    the seeds a sweep may hold; None when no rounds are asked for."""
    width, decided, max_seeds = args.until_width, args.until_decided, args.max_seeds
    if width is None and not decided:
        if max_seeds is not None:
            raise UsageError("--max-seeds bounds the rounds of --until-width or --until-decided, and neither is given",
                             "add --until-width W or --until-decided, or leave --max-seeds out")
        return None
    if width is not None:
        _positive("--until-width", width, high=2.0)  # a difference of accuracies lies in [-1, 1]
    if len(arms) != 2:
        raise UsageError(f"--until-{'width' if width is not None else 'decided'} compares BN with plain, and "
                         f"--batchnorm {args.batchnorm} runs one arm", "use --batchnorm both (the default)")
    rule = f"--until-{'width' if width is not None else 'decided'}"
    if axes:
        raise UsageError(f"{rule} adds seeds per weight scale, and {', '.join(AXIS_OPTIONS[k] for k in axes)} "
                         "give several values", "run the rounds for one value of each hyperparameter at a time")
    if any(isinstance(w, str) for w in scales):
        raise UsageError(f"{rule} compares numeric weight scales, and --weight-scales names "
                         f"{', '.join(w for w in scales if isinstance(w, str))}", "give numbers to --weight-scales")
    max_seeds = DEFAULT_MAX_SEEDS if max_seeds is None else max_seeds
    if max_seeds < len(seeds):
        raise UsageError(f"--max-seeds {max_seeds} is fewer than the {len(seeds)} seeds of --seeds {args.seeds}",
                         f"give --max-seeds at least {len(seeds)}, or fewer --seeds")
    if len(scales) * 2 * max_seeds > MAX_TRIALS:
        raise UsageError(f"--max-seeds {max_seeds} allows {len(scales) * 2 * max_seeds:,} trials; at most "
                         f"{MAX_TRIALS:,} fit in one experiment", "give a smaller --max-seeds")
    return Until(width=width, decided=decided, max_seeds=max_seeds, first_seed=seeds[0], step=len(seeds))

