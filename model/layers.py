"""Layers with forward/backward passes, after *Deep Learning from Scratch* (ch. 5 and 6, ``common/layers.py``).

Every layer works on 2-D arrays of shape (batch, features), keeps what its backward pass needs from the last
forward pass, and never writes over the arrays it is given. Parameters (W, b, gamma, beta) are held by
reference: an optimizer that updates them in place (``params[key] -= ...``) is seen by the layers at once, as in
the book.

No layer changes the dtype of what it is given: float32 in, float32 out (Python float constants do not upcast
under NumPy 2's promotion rules; NumPy scalars would, so none are used).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Affine",
    "BatchNormalization",
    "Dropout",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "as_labels",
    "log_softmax",
    "softmax",
    "softmax_cross_entropy",
]


class Affine:
    """``out = x @ W + b``.

    ``need_dx=False`` is for the first layer of a network: the gradient with respect to the network input is
    never used, and computing it (a batch x 100 x 784 product) would double the first layer's backward cost.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, *, need_dx: bool = True) -> None:
        self.W = W
        self.b = b
        self.need_dx = need_dx
        self.x: np.ndarray | None = None
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.x = x
        out = x @ self.W
        out += self.b
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T if self.need_dx else None


class Relu:
    """``out = max(x, 0)``."""

    def __init__(self) -> None:
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.mask = x > 0  # only backward needs the mask
        return np.maximum(x, 0.0)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.mask


class Sigmoid:
    """``out = 1 / (1 + exp(-x))``, computed as ``0.5 * (1 + tanh(x / 2))``, which never overflows."""

    def __init__(self) -> None:
        self.out: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.out = 0.5 * (1.0 + np.tanh(0.5 * x))
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * (1.0 - self.out) * self.out


class BatchNormalization:
    """Batch normalization (Ioffe & Szegedy 2015) as in the book's ``common/layers.py``.

    Training mode normalizes with the mini-batch mean and biased variance and, unless ``update_running=False``,
    updates the running statistics, ``running = momentum * running + (1 - momentum) * batch_stat``; they start
    at zeros (the book's behaviour). Inference mode normalizes with the running statistics. ``eps`` defaults to
    1e-6 (the book's ``10e-7``).
    """

    def __init__(
        self,
        gamma: np.ndarray,
        beta: np.ndarray,
        momentum: float = 0.9,
        eps: float = 1e-6,
        running_mean: np.ndarray | None = None,
        running_var: np.ndarray | None = None,
    ) -> None:
        self.gamma = gamma
        self.beta = beta
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.running_mean = np.zeros_like(gamma) if running_mean is None else running_mean
        self.running_var = np.zeros_like(gamma) if running_var is None else running_var
        # kept for backward: the normalized input and 1 / sqrt(var + eps) of the last training batch
        self.xn: np.ndarray | None = None
        self.inv_std: np.ndarray | None = None
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True, *, update_running: bool = True) -> np.ndarray:
        if not train:
            scale, shift = self.inference_scale_shift()
            return x * scale + shift
        n = x.shape[0]
        mu = x.sum(axis=0) / n
        xc = x - mu
        var = (xc**2).sum(axis=0) / n  # biased variance, as the book's
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        self.xn = xc
        self.xn *= self.inv_std  # xc is ours: normalized where it lies
        if update_running:
            m = self.momentum
            self.running_mean = m * self.running_mean + (1.0 - m) * mu
            self.running_var = m * self.running_var + (1.0 - m) * var
        out = self.gamma * self.xn
        out += self.beta
        return out

    def inference_scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Inference mode as a per-feature map ``x * scale + shift``:
        ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``."""
        scale = self.gamma / np.sqrt(self.running_var + self.eps)
        return scale, self.beta - self.running_mean * scale

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # The book's step-by-step graph (dxn, dxc, dstd, dvar, dmu) collapses to the same derivative
        #   dx = gamma * inv_std * (dout - dbeta / N - xn * dgamma / N).
        n = dout.shape[0]
        self.dbeta = dout.sum(axis=0)
        self.dgamma = (self.xn * dout).sum(axis=0)
        dx = dout - self.dbeta / n
        dx -= self.xn * (self.dgamma / n)
        dx *= self.gamma * self.inv_std
        return dx


class Dropout:
    """Dropout as in the book: training drops each unit with probability ``dropout_ratio`` (its mask drawn from
    ``rng``); inference scales by ``1 - dropout_ratio`` (not inverted dropout)."""

    def __init__(self, dropout_ratio: float = 0.5, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
        self.dropout_ratio = float(dropout_ratio)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.mask = self.rng.random(x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.mask


def as_labels(t: np.ndarray) -> np.ndarray:
    """Integer class labels from integer labels or one-hot rows (as ``np.intp``, NumPy's index type)."""
    t = np.asarray(t)
    if t.ndim == 2:
        return t.argmax(axis=1)
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise ValueError(f"labels must be 1-D integers or 2-D one-hot rows, got {t.dtype} of shape {t.shape}")
    return t.astype(np.intp, copy=False)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise ``log(softmax(x))`` as exact log-sum-exp, shifted by the row maximum so exp never overflows:
    finite for any finite scores (the book's ``-log(y + 1e-7)`` caps the loss at 16.1 instead). A NaN score makes
    its row NaN, so a diverged net's loss is NaN."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    return np.exp(log_softmax(x))


def softmax_cross_entropy(x: np.ndarray, t: np.ndarray) -> float:
    """Mean cross-entropy of softmax(x) against labels ``t`` (integers or one-hot)."""
    t = as_labels(t)
    return float(-np.mean(log_softmax(x)[np.arange(len(t)), t]))


class SoftmaxWithLoss:
    """Softmax followed by the cross-entropy loss (the network's last layer)."""

    def __init__(self) -> None:
        self.y: np.ndarray | None = None  # softmax output
        self.t: np.ndarray | None = None  # integer labels
        self.loss: float | None = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        self.t = as_labels(t)
        log_y = log_softmax(x)
        self.y = np.exp(log_y)
        self.loss = float(-np.mean(log_y[np.arange(len(self.t)), self.t]))
        return self.loss

    def backward(self, dout: float = 1.0) -> np.ndarray:
        # (y - onehot(t)) / N, subtracting 1 at the label positions instead of building a one-hot array
        n = len(self.t)
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1.0
        return dx * (float(dout) / n)
