"""Where one trial's time goes: exclusive seconds per layer kind, and numpy's cost per call at the trial's shapes.

``profile_trial`` runs one trial with a timer around each layer method (the model's code is untouched; the timers
are put on its classes for that one trial and taken off after). Categories:

- ``affine``: the Affine layers in training (the matrix products, the bias, the column sums);
- ``batchnorm``, ``relu``, ``softmax_loss``: those layers in training (no matrix products at all);
- ``sgd_update``: the optimizer's update of the parameter arrays;
- ``evaluation``: the inference passes after every epoch (train loss/accuracy and test accuracy), all layers;
- ``other``: the rest of the trial (batch gathering, the loop, Python between the layers).

Each timer adds about a microsecond per call; ``instrumented_s`` is the profiled trial's own wall time.

``numpy_call_costs`` times single numpy operations on a (100, 100) batch as batchnorm and ReLU use them: the same
elementwise op on a same-shaped array and with a per-feature vector broadcast over the rows (numpy then runs its
inner loop once per row), and an op on a 100-vector (all call overhead).
"""

from __future__ import annotations

import time
import timeit
from collections import Counter

import numpy as np

from model import run_trial
from model.layers import Affine, BatchNormalization, Relu, SoftmaxWithLoss
from model.network import MultiLayerNet
from model.optimizers import SGD

#: (class, method, category) timed by ``profile_trial``.
TIMED = [
    (Affine, "forward", "affine"), (Affine, "backward", "affine"),
    (BatchNormalization, "forward", "batchnorm"), (BatchNormalization, "backward", "batchnorm"),
    (Relu, "forward", "relu"), (Relu, "backward", "relu"),
    (SoftmaxWithLoss, "forward", "softmax_loss"), (SoftmaxWithLoss, "backward", "softmax_loss"),
    (SGD, "update", "sgd_update"),
    (MultiLayerNet, "evaluate", "evaluation"), (MultiLayerNet, "accuracy", "evaluation"),
]
EVALUATION = "evaluation"


class _ExclusiveTimer:
    """Seconds per category, a call's time less that of the timed calls it makes; inside an evaluation
    everything counts as evaluation."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self.children: list[float] = []
        self.in_evaluation = False

    def wrap(self, method, category: str):
        timer = self

        def timed(*args, **kwargs):
            if timer.in_evaluation:
                return method(*args, **kwargs)
            timer.children.append(0.0)
            timer.in_evaluation = category == EVALUATION
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                timer.in_evaluation = False
                timer.seconds[category] += elapsed - timer.children.pop()
                if timer.children:
                    timer.children[-1] += elapsed

        return timed


def profile_trial(config: dict, data: tuple) -> dict:
    """``{"instrumented_s": wall seconds, "seconds": {category: exclusive seconds, ..., "other": ...}}`` of one
    trial of ``config`` on ``data`` = ``((x_train, t_train), (x_test, t_test))``."""
    (x_train, t_train), (x_test, t_test) = data
    timer = _ExclusiveTimer()
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in TIMED]
    try:
        for cls, name, category in TIMED:
            setattr(cls, name, timer.wrap(cls.__dict__[name], category))
        start = time.perf_counter()
        run_trial(config, x_train, t_train, x_test, t_test)
        total = time.perf_counter() - start
    finally:
        for cls, name, method in originals:
            setattr(cls, name, method)
    seconds = {category: float(timer.seconds[category]) for category in dict.fromkeys(c for _, _, c in TIMED)}
    seconds["other"] = total - sum(seconds.values())
    return {"instrumented_s": total, "seconds": seconds}


def numpy_call_costs(dtype: str, rows: int = 100, features: int = 100, number: int = 2000) -> dict[str, float]:
    """Microseconds per call (best of 5 runs of ``number``) of: an elementwise subtraction of two (rows, features)
    arrays (``elementwise_us``), the same with a (features,) vector broadcast over the rows (``row_broadcast_us``),
    and a product of two (features,) vectors (``vector_us``)."""
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((rows, features)).astype(dtype) for _ in range(2))
    v, w = (rng.standard_normal(features).astype(dtype) for _ in range(2))
    ops = {"elementwise_us": lambda: x - y, "row_broadcast_us": lambda: x - v, "vector_us": lambda: v * w}
    return {name: min(timeit.repeat(op, number=number, repeat=5)) / number * 1e6 for name, op in ops.items()}
