"""``MultiLayerNet``: the book's ``MultiLayerNetExtend`` (ch. 6) with an explicit rng and dtype."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model.layers import (
    Affine,
    BatchNormalization,
    Dropout,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    as_labels,
    softmax_cross_entropy,
)

__all__ = ["ACTIVATIONS", "DTYPES", "NAMED_INITS", "MultiLayerNet", "init_scale"]

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}
DTYPES = ("float64", "float32")
#: std = sqrt(value / fan_in), as the book's ``weight_init_std`` names ('relu'/'he', 'sigmoid'/'xavier').
NAMED_INITS = {"he": 2.0, "relu": 2.0, "xavier": 1.0, "sigmoid": 1.0}


def init_scale(weight_init_std: float | str, fan_in: int) -> float:
    """The standard deviation of a layer's initial weights: a number as given, or by name
    ('he'/'relu': sqrt(2/fan_in), 'xavier'/'sigmoid': sqrt(1/fan_in)) as in the book."""
    if isinstance(weight_init_std, str):
        key = weight_init_std.lower()
        if key not in NAMED_INITS:
            raise ValueError(
                f"weight_init_std must be a positive number or one of {sorted(NAMED_INITS)}, got {weight_init_std!r}"
            )
        return math.sqrt(NAMED_INITS[key] / fan_in)
    if isinstance(weight_init_std, bool) or not isinstance(weight_init_std, (int, float, np.floating)):
        raise ValueError(f"weight_init_std must be a positive number or a name, got {weight_init_std!r}")
    if not (math.isfinite(weight_init_std) and weight_init_std > 0):
        raise ValueError(f"weight_init_std must be a positive finite number, got {weight_init_std!r}")
    return float(weight_init_std)


def _as_rng(rng: np.random.Generator | int | None, what: str) -> np.random.Generator:
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{what} must be a numpy Generator or an int seed, got {type(rng).__name__}")
    return rng


class MultiLayerNet:
    """A fully connected net: (Affine -> [BatchNorm] -> activation -> [Dropout]) per hidden layer,
    then Affine -> softmax with cross-entropy loss.

    ``params`` holds ``W1..W{L}`` (fan_in, fan_out), ``b1..b{L}`` and, with batchnorm, ``gamma1..gamma{L-1}`` and
    ``beta1..beta{L-1}``, one array each. The layers hold these very arrays, so update them in place (as the
    optimizers do); assigning a new array to ``params[key]`` would not reach the layers.

    Weights are drawn W1, W2, ... from ``rng`` (a Generator or an int seed; None takes fresh OS entropy, not
    reproducible) in float64, ``N(0, std^2)``, then cast to ``dtype``; batchnorm draws nothing, so a batchnorm
    net and a plain net built with the same seed get identical W and b. Dropout masks come from ``dropout_rng``
    (by default ``rng``, after the weights).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        activation: str = "relu",
        weight_init_std: float | str = "relu",
        weight_decay_lambda: float = 0.0,
        use_dropout: bool = False,
        dropout_ratio: float = 0.5,
        use_batchnorm: bool = False,
        *,
        rng: np.random.Generator | int | None = None,
        dropout_rng: np.random.Generator | int | None = None,
        dtype: str | np.dtype | type = "float64",
        batchnorm_momentum: float = 0.9,
        batchnorm_eps: float = 1e-6,
    ) -> None:
        sizes = [input_size, *hidden_size_list, output_size]
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        rng = _as_rng(rng, "rng")
        dropout_rng = rng if dropout_rng is None else _as_rng(dropout_rng, "dropout_rng")

        self.input_size = int(input_size)
        self.hidden_size_list = [int(s) for s in hidden_size_list]
        self.output_size = int(output_size)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.activation = activation
        self.weight_decay_lambda = float(weight_decay_lambda)
        self.use_dropout = bool(use_dropout)
        self.use_batchnorm = bool(use_batchnorm)
        self.rng = rng

        self.params: dict[str, np.ndarray] = {}
        for idx in range(1, len(sizes)):
            scale = init_scale(weight_init_std, sizes[idx - 1])
            # drawn in float64 whatever the dtype, so float32 and float64 nets start from the same weights
            self.params[f"W{idx}"] = (scale * rng.standard_normal((sizes[idx - 1], sizes[idx]))).astype(self.dtype)
            self.params[f"b{idx}"] = np.zeros(sizes[idx], dtype=self.dtype)
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                self.params[f"gamma{idx}"] = np.ones(sizes[idx], dtype=self.dtype)
                self.params[f"beta{idx}"] = np.zeros(sizes[idx], dtype=self.dtype)

        self.layers: dict[str, object] = {}
        for idx in range(1, self.hidden_layer_num + 1):
            # the first layer's input is the data: its gradient is never needed
            self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"], self.params[f"b{idx}"], need_dx=idx > 1)
            if self.use_batchnorm:
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(
                    self.params[f"gamma{idx}"], self.params[f"beta{idx}"], momentum=batchnorm_momentum,
                    eps=batchnorm_eps,
                )
            self.layers[f"Activation_function{idx}"] = ACTIVATIONS[activation]()
            if self.use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ratio, rng=dropout_rng)
        last = self.hidden_layer_num + 1
        self.layers[f"Affine{last}"] = Affine(self.params[f"W{last}"], self.params[f"b{last}"])
        self.last_layer = SoftmaxWithLoss()

    # -- forward -------------------------------------------------------------------------------

    def predict(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """Scores (pre-softmax) for a batch; ``train`` selects batch statistics and dropout."""
        x = np.asarray(x, dtype=self.dtype)  # no copy when the dtype already matches
        if not train and self.use_batchnorm:
            return self._predict_folded(x)
        for layer in self.layers.values():
            x = layer.forward(x, train)
        return x

    def _predict_folded(self, x: np.ndarray) -> np.ndarray:
        """Inference with each BatchNorm folded into the Affine before it: in inference batchnorm is a fixed map
        ``x * scale + shift``, so ``(x @ W + b) * scale + shift == x @ (W * scale) + (b * scale + shift)``.
        Equal to layer-by-layer inference up to rounding."""
        # Kept for speed: layer by layer instead makes a float64 batchnorm trial 8.5 % slower (ab_trial, 7 pairs).
        for name, layer in self.layers.items():
            if isinstance(layer, BatchNormalization):
                continue  # folded into the Affine before it
            bn = self.layers.get(name.replace("Affine", "BatchNorm"))
            if isinstance(bn, BatchNormalization):
                scale, shift = bn.inference_scale_shift()
                x = x @ (layer.W * scale) + (layer.b * scale + shift)
            else:
                x = layer.forward(x, train=False)
        return x

    def weight_decay(self) -> float:
        """``0.5 * lambda * sum(W**2)`` over all weight matrices (the L2 penalty in the loss; none on b, gamma,
        beta), as the book's ch. 6."""
        if self.weight_decay_lambda == 0.0:
            return 0.0
        total = sum(float(np.sum(self.params[f"W{i}"] ** 2)) for i in range(1, self.hidden_layer_num + 2))
        return 0.5 * self.weight_decay_lambda * total

    def loss(self, x: np.ndarray, t: np.ndarray, train: bool = True) -> float:
        """Cross-entropy loss plus weight decay; in training mode (the default here, unlike the book's
        ``train_flg=False``) it uses batch statistics and dropout and prepares ``backward``."""
        y = self.predict(x, train)
        return self.last_layer.forward(y, t) + self.weight_decay()

    def batch_stats_loss(self, x: np.ndarray, t: np.ndarray) -> float:
        """The loss with batchnorm normalizing by the statistics of ``x`` itself, as in training, but changing
        nothing: the running statistics are left as they are, and dropout scales as in inference (no mask is
        drawn). Weight decay included. What the training loop reports at epoch 0 for a batchnorm net, whose
        running statistics are still zeros then."""
        h = np.asarray(x, dtype=self.dtype)
        for layer in self.layers.values():
            if isinstance(layer, BatchNormalization):
                h = layer.forward(h, train=True, update_running=False)
            else:
                h = layer.forward(h, train=False)
        return softmax_cross_entropy(h, t) + self.weight_decay()

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        """Fraction of correct predictions, in inference mode. A row of NaN scores predicts class 0 (NumPy's
        argmax of NaNs), which is counted like any other prediction."""
        y = self.predict(x, train=False)
        return float(np.mean(y.argmax(axis=1) == as_labels(t)))

    def evaluate(self, x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
        """``(loss, accuracy)`` from one inference-mode forward pass (what the training loop records)."""
        t = as_labels(t)
        y = self.predict(x, train=False)
        return softmax_cross_entropy(y, t) + self.weight_decay(), float(np.mean(y.argmax(axis=1) == t))

    # -- backward ------------------------------------------------------------------------------

    def gradient(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of ``loss(x, t, train=True)`` by backpropagation: new arrays with the keys and shapes of
        ``params``, weight decay included, as the book's ``MultiLayerNetExtend.gradient``."""
        self.loss(x, t, train=True)
        dout = self.last_layer.backward(1.0)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)

        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{idx}"]
            grads[f"W{idx}"] = affine.dW
            if self.weight_decay_lambda:
                grads[f"W{idx}"] = affine.dW + self.weight_decay_lambda * affine.W
            grads[f"b{idx}"] = affine.db
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                grads[f"gamma{idx}"] = self.layers[f"BatchNorm{idx}"].dgamma
                grads[f"beta{idx}"] = self.layers[f"BatchNorm{idx}"].dbeta
        return grads
