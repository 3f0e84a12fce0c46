"""The hyperparameter axes of a sweep: every trial option that takes a list, and how one value of it is read.

``--lr 0.01,0.1`` and ``--optimizer sgd,adam`` make a grid of 2 x 2 cells beside the weight scales, the arms and the
seeds (:func:`pipeline.trials.make_grid`). ``--hidden-sizes`` separates its lists with ``;`` (``100,100;50,50``).
Each value is checked here, as a class (type, range, choice), before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from model.network import ACTIVATIONS
from model.optimizers import OPTIMIZERS
from pipeline.trials import UsageError


@dataclass(frozen=True)
class Axis:
    """One trial option that takes a list: its config key, its default, how one value is read, its separator."""

    key: str
    default: str
    parse: Callable[[str, str], object]  # (option, one value) -> the config value; UsageError on a bad one
    help: str
    sep: str = ","

    @property
    def dest(self) -> str:
        """The argparse attribute: ``lr``, ``hidden_sizes``."""
        return self.key.replace("hidden_size_list", "hidden_sizes")

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")


def _whole(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a whole number", f"give {option} whole numbers of at least 1, "
                         f"e.g. {option} 100") from None
    if value < 1:
        raise UsageError(f"{option} {value} is out of range", f"give {option} a whole number of at least 1")
    return value


def _real(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a number", f"give {option} numbers, e.g. {option} 0.01,0.1") \
            from None


def _positive(option: str, text: str) -> float:
    value = _real(option, text)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} {text} is out of range", f"give {option} a number above 0")
    return value


def _decay(option: str, text: str) -> float:
    value = _real(option, text)
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{option} {text} is out of range", f"give {option} a number of at least 0")
    return value


def _dropout(option: str, text: str) -> float:
    value = _real(option, text)
    if not (math.isfinite(value) and 0 <= value < 1):
        raise UsageError(f"{option} {text} is out of range", f"give {option} a ratio from 0 up to (not including) 1")
    return value


def _choice(choices) -> Callable[[str, str], str]:
    def parse(option: str, text: str) -> str:
        if text not in choices:
            raise UsageError(f"{option} {text!r} is not a choice", f"choose from {', '.join(choices)}")
        return text
    return parse


def _widths(option: str, text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise UsageError(f"{option} {text!r} has an empty width",
                         f"give {option} ,-separated widths, e.g. 100,100,100,100,100 (;-separated for several)")
    try:
        widths = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a list of whole numbers",
                         "give widths like 100,100,100,100,100") from None
    if min(widths) < 1:
        raise UsageError(f"{option} {text!r} has a width below 1", "give every layer at least 1 unit")
    return widths


#: In the order a trial's config lists them (pipeline.trials.PARAM_ORDER).
AXES = (
    Axis("train_size", "1000", _whole, "training samples (the first N of the train split)"),
    Axis("epochs", "20", _whole, "epochs; metrics are logged for epochs 0..N"),
    Axis("batch_size", "100", _whole, "mini-batch size"),
    Axis("lr", "0.01", _positive, "learning rate"),
    Axis("optimizer", "sgd", _choice(OPTIMIZERS), f"optimizer: {', '.join(OPTIMIZERS)}"),
    Axis("hidden_size_list", "100,100,100,100,100", _widths,
         "hidden layer widths of one net, e.g. 100,100,100,100,100;50,50 for two nets", sep=";"),
    Axis("activation", "relu", _choice(tuple(ACTIVATIONS)), f"activation: {', '.join(ACTIVATIONS)}"),
    Axis("weight_decay", "0", _decay, "L2 weight decay (lambda of the book's 6.4.1; 0: none)"),
    Axis("dropout", "0", _dropout, "dropout ratio of every hidden layer (0: none)"),
)


def parse_axis(axis: Axis, text: str) -> list:
    """The distinct values of ``text`` (``axis.sep``-separated), in the order given."""
    parts = [p.strip() for p in str(text).split(axis.sep)]
    if any(not p for p in parts):
        raise UsageError(f"{axis.option} {text!r} has an empty value",
                         f"give {axis.option} a {axis.sep}-separated list, e.g. {axis.option} {axis.default}")
    values: list = []
    for part in parts:
        value = axis.parse(axis.option, part)
        if value not in values:
            values.append(value)
    return values
