"""Optimizers of the book's ch. 6 (``common/optimizer.py``): ``update(params, grads)`` changes
``params`` in place, so the layers holding those arrays see the new values.

Learning rates and constants are kept as Python floats (``math.sqrt``, not ``np.sqrt``): a NumPy
float64 scalar would silently turn float32 parameters into float64 temporaries.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OPTIMIZERS", "AdaGrad", "Adam", "Momentum", "SGD", "make_optimizer"]

Params = dict[str, np.ndarray]


class SGD:
    """``W -= lr * dW``."""

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = float(lr)

    def update(self, params: Params, grads: Params) -> None:
        for key, grad in grads.items():
            params[key] -= self.lr * grad


class Momentum:
    """``v = momentum * v - lr * dW``; ``W += v``."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.v: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key, grad in grads.items():
            v = self.v[key]
            v *= self.momentum
            v -= self.lr * grad
            params[key] += v


class AdaGrad:
    """``h += dW * dW``; ``W -= lr * dW / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr: float = 0.01) -> None:
        self.lr = float(lr)
        self.h: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        for key, grad in grads.items():
            h = self.h[key]
            h += grad * grad
            params[key] -= self.lr * grad / (np.sqrt(h) + 1e-7)


class Adam:
    """Adam (Kingma & Ba 2015) in the book's form: bias correction folded into the step size,
    ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``; ``W -= lr_t * m / (sqrt(v) + 1e-7)``."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.iter = 0
        self.m: Params | None = None
        self.v: Params | None = None

    def update(self, params: Params, grads: Params) -> None:
        if self.m is None:
            self.m = {key: np.zeros_like(val) for key, val in params.items()}
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key, grad in grads.items():
            m, v = self.m[key], self.v[key]
            m += (1.0 - self.beta1) * (grad - m)
            v += (1.0 - self.beta2) * (grad * grad - v)
            params[key] -= lr_t * m / (np.sqrt(v) + 1e-7)


_BY_NAME = {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "adam": Adam}
OPTIMIZERS: tuple[str, ...] = tuple(_BY_NAME)


def make_optimizer(name: str, lr: float) -> SGD | Momentum | AdaGrad | Adam:
    """The optimizer called ``name`` (one of ``OPTIMIZERS``) with learning rate ``lr``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    return _BY_NAME[name](lr=float(lr))
