"""The mini-batch training loop and its ``History`` (contract: docs/design.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from model.layers import as_labels
from model.network import MultiLayerNet

__all__ = ["Callback", "History", "iter_epochs", "train"]

Callback = Callable[[int, dict], "bool | None"]


class Optimizer(Protocol):
    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None: ...


@dataclass
class History:
    """Per-epoch measurements, index = epoch (0 = before any update).

    Each list has ``epochs + 1`` entries (fewer if a callback stopped training);
    ``test_acc`` is empty when no test data was given."""

    train_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    def add(self, record: dict[str, float]) -> None:
        """Append one epoch's measurements (a record of :func:`iter_epochs`)."""
        self.train_acc.append(record["train_acc"])
        self.train_loss.append(record["train_loss"])
        if "test_acc" in record:
            self.test_acc.append(record["test_acc"])


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _prepare(net: MultiLayerNet, x: np.ndarray, t: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The data in the net's dtype and the labels as integers, converted once for the whole run."""
    x = np.ascontiguousarray(x, dtype=net.dtype)
    t = as_labels(t)
    if x.ndim != 2 or x.shape[1] != net.input_size:
        raise ValueError(f"{what} inputs must have shape (n, {net.input_size}), got {x.shape}")
    if len(t) != len(x):
        raise ValueError(f"{what} has {len(x)} inputs but {len(t)} labels")
    if len(x) == 0:
        raise ValueError(f"{what} data is empty")
    return x, t


def iter_epochs(
    net: MultiLayerNet,
    optimizer: Optimizer,
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_test: np.ndarray | None = None,
    t_test: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator | int,
) -> Iterator[tuple[int, dict[str, float]]]:
    """Train ``net`` with ``optimizer`` on mini-batches, yielding ``(epoch, record)`` after each measurement.

    Each epoch visits every training sample once, in the order of ``rng.permutation(n)``, in batches
    of ``batch_size`` (the last one may be smaller). Before the first epoch (epoch 0) and after each
    epoch, one inference-mode forward pass over the training data gives ``train_loss`` and
    ``train_acc``, and one over the test data ``test_acc``: ``record = {"train_acc", "train_loss"[,
    "test_acc"]}`` (a batchnorm net's epoch-0 ``train_loss`` uses batch statistics, see ``_measure``). Stop
    iterating to stop training (a streaming caller, e.g. a Ray task, does this on divergence): nothing runs
    ahead of the consumer. A diverged (NaN/inf) loss is recorded, not raised.

    The arguments are checked, and the data converted to the net's dtype (once), at the call rather
    than at the first ``next``. Each step calls ``optimizer.update(net.params, net.gradient(xb, tb))``, as the
    book's ``Trainer``.
    """
    epochs = _check_count("epochs", epochs, 0)
    batch_size = _check_count("batch_size", batch_size, 1)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
    if (x_test is None) != (t_test is None):
        raise ValueError("give both x_test and t_test, or neither")
    x_train, t_train = _prepare(net, x_train, t_train, "training")
    test = None if x_test is None else _prepare(net, x_test, t_test, "test")
    return _epochs(net, optimizer, x_train, t_train, test, epochs, batch_size, rng)


def _epochs(
    net: MultiLayerNet,
    optimizer: Optimizer,
    x_train: np.ndarray,
    t_train: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
) -> Iterator[tuple[int, dict[str, float]]]:
    """The loop of :func:`iter_epochs`, on checked and converted data."""
    n = len(x_train)
    for epoch in range(epochs + 1):
        # A diverging net overflows: the NaN/inf loss in the record is the report, not a warning.
        # (Scoped per epoch, not across the yield, so the consumer's error state is left alone.)
        with np.errstate(over="ignore", invalid="ignore"):
            if epoch > 0:
                order = rng.permutation(n)
                for start in range(0, n, batch_size):
                    batch = order[start : start + batch_size]
                    optimizer.update(net.params, net.gradient(x_train[batch], t_train[batch]))
            yield epoch, _measure(net, x_train, t_train, test, initial=epoch == 0)


def _measure(
    net: MultiLayerNet, x_train: np.ndarray, t_train: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
    initial: bool,
) -> dict[str, float]:
    """One epoch's record. ``train_loss`` and ``train_acc`` come from one inference-mode pass over the training
    data, except a batchnorm net's epoch-0 ``train_loss`` (``initial``): its running statistics are still zeros,
    so that loss uses batch statistics without updating them (``MultiLayerNet.batch_stats_loss``)."""
    train_loss, train_acc = net.evaluate(x_train, t_train)
    if initial and net.use_batchnorm:
        train_loss = net.batch_stats_loss(x_train, t_train)
    record = {"train_acc": train_acc, "train_loss": train_loss}
    if test is not None:
        record["test_acc"] = net.accuracy(*test)
    return record


def train(
    net: MultiLayerNet,
    optimizer: Optimizer,
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_test: np.ndarray | None = None,
    t_test: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator | int,
    callback: Callback | None = None,
) -> History:
    """Train ``net`` (see :func:`iter_epochs`) and return the learning curves.

    ``callback(epoch, record)`` is called after each measurement; if it returns True, training stops.
    """
    history = History()
    for epoch, record in iter_epochs(
        net, optimizer, x_train, t_train, x_test, t_test, epochs=epochs, batch_size=batch_size, rng=rng
    ):
        history.add(record)
        if callback is not None and callback(epoch, record):
            break
    return history
