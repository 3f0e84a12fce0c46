"""Layers with forward/backward passes, after *Deep Learning from Scratch* (ch. 5 and 6).

Every layer works on 2-D arrays of shape (batch, features) and keeps what its backward pass needs
from the last forward pass. Parameters (W, b, gamma, beta) are held by reference: an optimizer that
updates them in place (``params[key] -= ...``) is seen by the layers at once, as in the book.

No layer changes the dtype of what it is given: float32 in, float32 out (Python float constants
do not upcast under NumPy 2's promotion rules; NumPy scalars would, so none are used).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "Affine",
    "BatchNormalization",
    "Dropout",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "as_labels",
    "softmax",
    "softmax_cross_entropy",
]


def column_sums(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a.sum(axis=0)`` of a (batch, features) array, as a product with a ones vector (into ``out`` if given).

    Same sums, another order of additions: BLAS's matrix-vector product takes about a third of the time of
    NumPy's axis-0 reduction on a (100, 100) batch, and a trial takes 2,000 to 3,000 such sums.
    """
    return np.matmul(_ones(a.shape[0], a.dtype), a, out=out)


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only vector of ``n`` ones, made once per (n, dtype): ``np.ones`` is a Python function whose
    call costs as much as the product it feeds."""
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


class Affine:
    """``out = x @ W + b``.

    ``need_dx=False`` is for the first layer of a network: the gradient with respect to the network
    input is never used, and computing it (a batch x 100 x 784 matrix product) would double the
    first layer's backward cost. ``dW``/``db``, if given, are the arrays ``backward`` writes the
    gradients into (a network's gradient buffer); by default each backward pass makes new ones.
    """

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        *,
        need_dx: bool = True,
        dW: np.ndarray | None = None,
        db: np.ndarray | None = None,
    ) -> None:
        self.W = W
        self.b = b
        self.need_dx = need_dx
        self.x: np.ndarray | None = None
        self._out = (dW, db)
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.x = x
        out = x @ self.W
        out += self.b  # in place: saves one batch-sized temporary
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        self.dW = np.matmul(self.x.T, dout, out=self._out[0])
        self.db = column_sums(dout, out=self._out[1])
        return dout @ self.W.T if self.need_dx else None


class Relu:
    """``out = max(x, 0)``.

    ``inplace=True`` (as PyTorch's ``ReLU(inplace=True)``) writes each pass's result over the array it is given
    (``x``, ``dout``): for a caller that owns that array and needs it no more, as ``MultiLayerNet`` does with the
    fresh output of the layer before. It spares a batch-sized array per pass; with batchnorm's, 1.6-2.5 % of a
    default trial (``benchmarks/ab_trial.py``). By default nothing given is changed."""

    def __init__(self, inplace: bool = False) -> None:
        self.mask: np.ndarray | None = None
        self.inplace = inplace

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.mask = x > 0  # only backward needs the mask: inference skips it
        return np.maximum(x, 0.0, out=x if self.inplace else None)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return np.multiply(dout, self.mask, out=dout if self.inplace else None)


class Sigmoid:
    """``out = 1 / (1 + exp(-x))``, computed as ``0.5 * (1 + tanh(x / 2))``, which never overflows.

    ``inplace`` as for :class:`Relu`."""

    def __init__(self, inplace: bool = False) -> None:
        self.out: np.ndarray | None = None
        self.inplace = inplace

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        out = np.multiply(x, 0.5, out=x if self.inplace else None)
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5
        self.out = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dx = np.multiply(dout, 1.0 - self.out, out=dout if self.inplace else None)
        dx *= self.out
        return dx


class BatchNormalization:
    """Batch normalization (Ioffe & Szegedy 2015) as in the book's ``common/layers.py``.

    Training mode normalizes with the mini-batch mean and biased variance and updates the running
    statistics, ``running = momentum * running + (1 - momentum) * batch_stat``; the running statistics
    start at zeros (the book's behaviour). Inference mode normalizes with the running statistics.
    ``eps`` defaults to 1e-6 (the book's ``10e-7``). ``dgamma``/``dbeta``, if given, are the arrays
    ``backward`` writes the gradients into, as for :class:`Affine`. ``inplace=True`` lets a training pass write
    over the array it is given (forward: ``x`` becomes the centred input it keeps; backward: ``dout`` becomes
    ``dx``), as for :class:`Relu`.
    """

    def __init__(
        self,
        gamma: np.ndarray,
        beta: np.ndarray,
        momentum: float = 0.9,
        eps: float = 1e-6,
        running_mean: np.ndarray | None = None,
        running_var: np.ndarray | None = None,
        *,
        dgamma: np.ndarray | None = None,
        dbeta: np.ndarray | None = None,
        inplace: bool = False,
    ) -> None:
        self.inplace = inplace
        self._out = (dgamma, dbeta)
        self.gamma = gamma
        self.beta = beta
        self.momentum = float(momentum)
        self.eps = float(eps)
        # zeros until the first training batch, as the book's lazy initialisation
        self.running_mean = np.zeros_like(gamma) if running_mean is None else running_mean
        self.running_var = np.zeros_like(gamma) if running_var is None else running_var
        # kept for backward: the centred input and 1 / sqrt(var + eps) of the last training batch
        self.xc: np.ndarray | None = None
        self.inv_std: np.ndarray | None = None
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train:
            scale, shift = self.inference_scale_shift()
            out = x * scale
            out += shift
            return out

        n = x.shape[0]
        mu = column_sums(x) / n
        xc = np.subtract(x, mu, out=x if self.inplace else None)
        var = np.einsum("ij,ij->j", xc, xc) / n  # biased variance; einsum avoids an xc**2 temporary
        inv_std = 1.0 / np.sqrt(var + self.eps)
        m = self.momentum
        self.running_mean = m * self.running_mean + (1.0 - m) * mu
        self.running_var = m * self.running_var + (1.0 - m) * var
        self.xc, self.inv_std = xc, inv_std
        # gamma * xn + beta with xn = xc * inv_std, without materialising xn (one pass less)
        out = xc * (self.gamma * inv_std)
        out += self.beta
        return out

    def inference_scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Inference mode as a per-feature map ``x * scale + shift``:
        ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``."""
        scale = self.gamma / np.sqrt(self.running_var + self.eps)
        return scale, self.beta - self.running_mean * scale

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # The book's step-by-step graph (dxn, dxc, dstd, dvar, dmu) collapses to
        #   dx = gamma * inv_std * (dout - dbeta / N - xn * dgamma / N),   xn = xc * inv_std,
        # the same derivative with two batch-sized temporaries instead of six; per-feature factors
        # are folded into small vectors first.
        n = dout.shape[0]
        xc, inv_std = self.xc, self.inv_std
        self.dbeta = column_sums(dout, out=self._out[1])
        self.dgamma = np.multiply(np.einsum("ij,ij->j", xc, dout), inv_std, out=self._out[0])  # sum(xn * dout)
        scale = self.gamma * inv_std
        dx = np.multiply(dout, scale, out=dout if self.inplace else None)  # dbeta and dgamma have read dout
        dx -= scale * self.dbeta / n
        dx -= xc * (scale * inv_std * self.dgamma / n)
        return dx


class Dropout:
    """Dropout as in the book: training drops each unit with probability ``dropout_ratio``;
    inference scales by ``1 - dropout_ratio`` (not inverted dropout)."""

    def __init__(self, dropout_ratio: float = 0.5, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
        self.dropout_ratio = float(dropout_ratio)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.mask = self.rng.random(x.shape, dtype=x.dtype) > self.dropout_ratio
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


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""
    _, e, sums = _softmax_parts(x)
    e /= sums[:, None]
    return e


def _softmax_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(shifted, exp(shifted), row sums of exp(shifted))`` with ``shifted = x - rowmax``.

    Subtracting the row maximum keeps exp from overflowing and makes every row sum >= 1, so its log
    is finite: the loss ``log(sum) - shifted[t]`` is exact log-sum-exp, finite for any finite scores
    (the book's ``-log(y + 1e-7)`` caps it at 16.1 instead).

    The row maximum is read at the row's argmax, and the row sums are a product with a ones vector:
    NumPy reduces along a row of 10 scores one row at a time, which on 1000 rows costs 3 to 5 times as
    much (both happen at every training step and once per epoch on the 1000 evaluation samples)."""
    row_max = x[np.arange(x.shape[0]), x.argmax(axis=1)]  # the same element x.max(axis=1) returns
    shifted = x - row_max[:, None]
    e = np.exp(shifted)
    return shifted, e, np.matmul(e, _ones(x.shape[1], x.dtype))


def softmax_cross_entropy(x: np.ndarray, t: np.ndarray) -> float:
    """Mean cross-entropy of softmax(x) against labels ``t`` (integers or one-hot), without keeping
    anything for a backward pass (used for evaluation)."""
    t = as_labels(t)
    shifted, _, sums = _softmax_parts(x)
    return float(np.mean(np.log(sums) - shifted[np.arange(x.shape[0]), t]))


class SoftmaxWithLoss:
    """Softmax followed by the cross-entropy loss (the network's last layer)."""

    def __init__(self) -> None:
        self.y: np.ndarray | None = None  # softmax output
        self.t: np.ndarray | None = None  # integer labels
        self.loss: float | None = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        t = as_labels(t)
        n = x.shape[0]
        shifted, e, sums = _softmax_parts(x)
        e /= sums[:, None]
        self.y = e
        self.t = t
        self.loss = float(np.mean(np.log(sums) - shifted[np.arange(n), t]))
        return self.loss

    def backward(self, dout: float = 1.0) -> np.ndarray:
        # (y - onehot(t)) / N, subtracting 1 at the label positions instead of building a one-hot array
        n = self.y.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1.0
        dx *= float(dout) / n
        return dx
