"""One trial of the sweep: a config dict -> a trained net's ``History`` (contract: docs/design.md)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from model.layers import as_labels
from model.network import ACTIVATIONS, DTYPES, MultiLayerNet
from model.optimizers import OPTIMIZERS, make_optimizer
from model.training import Callback, History, iter_epochs

__all__ = [
    "DEFAULT_CONFIG",
    "NUM_CLASSES",
    "WEIGHT_SCALE_NAMES",
    "build_trial",
    "dropout_rng",
    "iter_trial",
    "run_trial",
    "trial_rngs",
    "validate_config",
]

#: Every dataset the pipeline trains on ("mnist", "fashion-mnist", "idx": 28x28 images of 10 classes) has 10.
NUM_CLASSES = 10
REQUIRED_KEYS = ("weight_scale", "use_batchnorm", "seed")
#: weight_scale by name, as the book's ch. 6: std sqrt(2 / fan_in) (He) or sqrt(1 / fan_in) (Xavier) per layer.
WEIGHT_SCALE_NAMES = ("he", "xavier")
DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "train_size": 1000,
    "test_size": 1000,
    "epochs": 20,
    "batch_size": 100,
    "lr": 0.01,
    "optimizer": "sgd",
    "hidden_size_list": [100, 100, 100, 100, 100],
    "activation": "relu",
    "dtype": "float64",
    "weight_decay": 0.0,
    "dropout": 0.0,
}
#: Dropout masks come from a third child of the seed's SeedSequence (see ``trial_rngs``).
_DROPOUT_CHILD = 2


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(
        value
    )


def _is_positive_float(value: object) -> bool:
    return _is_real(value) and value > 0


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; ValueError (one line, naming the key) on a bad value,
    a missing required key (weight_scale, use_batchnorm, seed) or an unknown key."""
    if not isinstance(config, dict):
        raise ValueError(f"trial config must be a dict, got {type(config).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"trial config lacks {', '.join(missing)}")
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown trial config keys: {', '.join(unknown)}")
    cfg = {**DEFAULT_CONFIG, **config}

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"trial config {key} must be {expected}, got {cfg[key]!r}")

    scale = cfg["weight_scale"]
    if not (_is_positive_float(scale) or (isinstance(scale, str) and scale in WEIGHT_SCALE_NAMES)):
        raise bad("weight_scale", f"a positive finite number or one of {WEIGHT_SCALE_NAMES}")
    if not isinstance(cfg["use_batchnorm"], (bool, np.bool_)):
        raise bad("use_batchnorm", "a bool")
    if not _is_int(cfg["seed"]) or cfg["seed"] < 0:
        raise bad("seed", "an integer >= 0")
    if not isinstance(cfg["dataset"], str) or not cfg["dataset"]:
        raise bad("dataset", "a non-empty string")  # which names exist is the pipeline's business
    for key in ("train_size", "test_size", "epochs", "batch_size"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise bad(key, "an integer >= 1")
    if not _is_positive_float(cfg["lr"]):
        raise bad("lr", "a positive finite number")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise bad("optimizer", f"one of {OPTIMIZERS}")
    sizes = cfg["hidden_size_list"]
    if not isinstance(sizes, (list, tuple)) or not sizes or not all(_is_int(s) and s >= 1 for s in sizes):
        raise bad("hidden_size_list", "a non-empty list of positive integers")
    if cfg["activation"] not in ACTIVATIONS:
        raise bad("activation", f"one of {tuple(ACTIVATIONS)}")
    if cfg["dtype"] not in DTYPES:
        raise bad("dtype", f"one of {DTYPES}")
    if not _is_real(cfg["weight_decay"]) or not cfg["weight_decay"] >= 0:
        raise bad("weight_decay", "a finite number >= 0")
    if not _is_real(cfg["dropout"]) or not 0 <= cfg["dropout"] < 1:
        raise bad("dropout", "a number in [0, 1)")
    return cfg


def trial_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """``(init_rng, order_rng)`` for a seed: the net draws its weights from the first, the training
    loop its mini-batch orders from the second. Both arms of a seed (batchnorm and plain) therefore
    start from the same W/b and see the same mini-batches in the same order."""
    ss = np.random.SeedSequence(seed)
    init_rng, order_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    return init_rng, order_rng


def dropout_rng(seed: int) -> np.random.Generator:
    """The rng of a trial's dropout masks: the seed's third child (``trial_rngs`` has the first two), so masks
    are the same for every trial of the seed and leave the weights and the mini-batch orders as they were."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(_DROPOUT_CHILD + 1)[_DROPOUT_CHILD])


def build_trial(config: dict[str, Any], input_size: int, output_size: int):
    """``(net, optimizer, order_rng, cfg)`` for a trial config (validated, defaults filled in)."""
    cfg = validate_config(config)
    init_rng, order_rng = trial_rngs(int(cfg["seed"]))
    net = MultiLayerNet(
        input_size=input_size,
        hidden_size_list=list(cfg["hidden_size_list"]),
        output_size=output_size,
        activation=cfg["activation"],
        weight_init_std=scale if isinstance(scale := cfg["weight_scale"], str) else float(scale),
        weight_decay_lambda=float(cfg["weight_decay"]),
        use_dropout=cfg["dropout"] > 0,
        dropout_ratio=float(cfg["dropout"]),
        use_batchnorm=bool(cfg["use_batchnorm"]),
        rng=init_rng,
        dropout_rng=dropout_rng(int(cfg["seed"])),
        dtype=cfg["dtype"],
    )
    return net, make_optimizer(cfg["optimizer"], float(cfg["lr"])), order_rng, cfg


def _trial_data(cfg: dict[str, Any], x_train, t_train, x_test, t_test) -> tuple[np.ndarray, ...]:
    """The first ``train_size`` / ``test_size`` samples of each split, checked."""
    x_train, t_train = np.asarray(x_train), np.asarray(t_train)
    x_test, t_test = np.asarray(x_test), np.asarray(t_test)
    for split, x, t, size_key in (
        ("train", x_train, t_train, "train_size"),
        ("test", x_test, t_test, "test_size"),
    ):
        if x.ndim != 2:
            raise ValueError(f"{split} inputs must be a 2-D array (n, features), got shape {x.shape}")
        if len(x) != len(t):
            raise ValueError(f"{split} split has {len(x)} inputs but {len(t)} labels")
        if len(x) < cfg[size_key]:
            raise ValueError(f"{size_key}={cfg[size_key]} but the {split} split has only {len(x)} samples")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train and test inputs differ in width: {x_train.shape[1]} vs {x_test.shape[1]}")

    n_train, n_test = cfg["train_size"], cfg["test_size"]
    x_train, t_train = x_train[:n_train], t_train[:n_train]
    x_test, t_test = x_test[:n_test], t_test[:n_test]
    num_classes = NUM_CLASSES
    for split, t in (("train", t_train), ("test", t_test)):
        labels = as_labels(t)
        if (t.ndim == 2 and t.shape[1] != num_classes) or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{split} labels must be classes 0..{num_classes - 1} of {cfg['dataset']}")
    return x_train, t_train, x_test, t_test


def iter_trial(
    config: dict[str, Any],
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_test: np.ndarray,
    t_test: np.ndarray,
) -> Iterator[tuple[int, dict[str, float]]]:
    """Train the net a trial config describes, yielding ``(epoch, record)`` per epoch (see
    ``model.training.iter_epochs``); the config and data are checked at the call. Data and
    labels as for ``run_trial``."""
    cfg = validate_config(config)
    x_train, t_train, x_test, t_test = _trial_data(cfg, x_train, t_train, x_test, t_test)
    net, optimizer, order_rng, cfg = build_trial(cfg, x_train.shape[1], NUM_CLASSES)
    return iter_epochs(
        net,
        optimizer,
        x_train,
        t_train,
        x_test,
        t_test,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        rng=order_rng,
    )


def run_trial(
    config: dict[str, Any],
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_test: np.ndarray,
    t_test: np.ndarray,
    callback: Callback | None = None,
) -> History:
    """Train the net a trial config describes and return its learning curves.

    Uses the first ``train_size`` training and the first ``test_size`` test samples of the arrays
    given (ValueError if there are fewer). The net has ``NUM_CLASSES`` (10) outputs, whatever the
    dataset's name; labels must be integers in that range or one-hot rows of that width.
    ``callback(epoch, record)`` as in ``model.training.train``: returning True stops training."""
    history = History()
    for epoch, record in iter_trial(config, x_train, t_train, x_test, t_test):
        history.add(record)
        if callback is not None and callback(epoch, record):
            break
    return history
