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

__all__ = ["ACTIVATIONS", "DTYPES", "MultiLayerNet", "init_scale"]

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}
DTYPES = ("float64", "float32")
_NAMED_INITS = {"he": 2.0, "relu": 2.0, "xavier": 1.0, "sigmoid": 1.0}  # std = sqrt(value / fan_in)


def init_scale(weight_init_std: float | str, fan_in: int) -> float:
    """The standard deviation of a layer's initial weights: a number as given, or by name
    ('he'/'relu': sqrt(2/fan_in), 'xavier'/'sigmoid': sqrt(1/fan_in)) as in the book."""
    if isinstance(weight_init_std, str):
        key = weight_init_std.lower()
        if key not in _NAMED_INITS:
            raise ValueError(
                f"weight_init_std must be a positive number or one of {sorted(_NAMED_INITS)}, got {weight_init_std!r}"
            )
        return math.sqrt(_NAMED_INITS[key] / fan_in)
    if isinstance(weight_init_std, bool) or not isinstance(weight_init_std, (int, float, np.floating)):
        raise ValueError(f"weight_init_std must be a positive number or a name, got {weight_init_std!r}")
    if not (math.isfinite(weight_init_std) and weight_init_std > 0):
        raise ValueError(f"weight_init_std must be a positive finite number, got {weight_init_std!r}")
    return float(weight_init_std)


class MultiLayerNet:
    """A fully connected net: (Affine -> [BatchNorm] -> activation -> [Dropout]) per hidden layer,
    then Affine -> softmax with cross-entropy loss.

    ``params`` holds ``W1..W{L}`` (fan_in, fan_out), ``b1..b{L}`` and, with batchnorm,
    ``gamma1..gamma{L-1}`` and ``beta1..beta{L-1}``. The layers hold these very arrays, so update them
    in place (as the optimizers do); assigning a new array to ``params[key]`` would not reach the layers.

    Weights are drawn W1, W2, ... from ``rng`` (a Generator or an int seed; None takes fresh OS entropy,
    not reproducible) in float64, ``N(0, std^2)``,
    then cast to ``dtype``; batchnorm draws nothing, so a batchnorm net and a plain net built with the
    same seed get identical W and b. Dropout masks come from the same rng, after the weights.
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
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(rng)
        elif not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")

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
            fan_in, fan_out = sizes[idx - 1], sizes[idx]
            scale = init_scale(weight_init_std, fan_in)
            # drawn in float64 whatever the dtype, so float32 and float64 nets start from the same weights
            self.params[f"W{idx}"] = (scale * rng.standard_normal((fan_in, fan_out))).astype(self.dtype)
            self.params[f"b{idx}"] = np.zeros(fan_out, dtype=self.dtype)

        self.layers: dict[str, object] = {}
        for idx in range(1, self.hidden_layer_num + 1):
            size = self.hidden_size_list[idx - 1]
            # the first layer's input is the data: its gradient is never needed
            self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"], self.params[f"b{idx}"], need_dx=idx > 1)
            if self.use_batchnorm:
                self.params[f"gamma{idx}"] = np.ones(size, dtype=self.dtype)
                self.params[f"beta{idx}"] = np.zeros(size, dtype=self.dtype)
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(
                    self.params[f"gamma{idx}"],
                    self.params[f"beta{idx}"],
                    momentum=batchnorm_momentum,
                    eps=batchnorm_eps,
                )
            self.layers[f"Activation_function{idx}"] = ACTIVATIONS[activation]()
            if self.use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ratio, rng=rng)
        last = self.hidden_layer_num + 1
        self.layers[f"Affine{last}"] = Affine(self.params[f"W{last}"], self.params[f"b{last}"], need_dx=last > 1)
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
        """Inference-mode ``predict`` with each BatchNorm folded into the Affine before it.

        In inference mode batchnorm is a fixed per-feature map ``x * scale + shift``, so
        ``(x @ W + b) * scale + shift == x @ (W * scale) + (b * scale + shift)``: one matrix product
        instead of a product and two more passes over the activations. Evaluation (two 1000-sample
        passes per epoch) is a third of a trial's time. Equal to the layer-by-layer result up to rounding.
        """
        for name, layer in self.layers.items():
            if isinstance(layer, BatchNormalization):
                continue  # folded into the Affine before it
            bn = self.layers.get(name.replace("Affine", "BatchNorm"))
            if isinstance(layer, Affine) and bn is not None:
                scale, shift = bn.inference_scale_shift()
                x = x @ (layer.W * scale)
                x += layer.b * scale + shift
            else:
                x = layer.forward(x, train=False)
        return x

    def weight_decay(self) -> float:
        """``0.5 * lambda * sum(W**2)`` over all weight matrices (the L2 penalty in the loss)."""
        if self.weight_decay_lambda == 0.0:
            return 0.0
        total = sum(float(np.sum(self.params[f"W{i}"] ** 2)) for i in range(1, self.hidden_layer_num + 2))
        return 0.5 * self.weight_decay_lambda * total

    def loss(self, x: np.ndarray, t: np.ndarray, train: bool = True) -> float:
        """Cross-entropy loss plus weight decay; in training mode (the default here, unlike the book's
        ``train_flg=False``) it uses batch statistics and prepares ``backward``."""
        y = self.predict(x, train)
        return self.last_layer.forward(y, t) + self.weight_decay()

    def accuracy(self, x: np.ndarray, t: np.ndarray) -> float:
        """Fraction of correct predictions, in inference mode."""
        y = self.predict(x, train=False)
        return float(np.mean(y.argmax(axis=1) == as_labels(t)))

    def evaluate(self, x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
        """``(loss, accuracy)`` from one inference-mode forward pass (what the training loop records)."""
        t = as_labels(t)
        y = self.predict(x, train=False)
        loss = softmax_cross_entropy(y, t) + self.weight_decay()
        return loss, float(np.mean(y.argmax(axis=1) == t))

    # -- backward ------------------------------------------------------------------------------

    def gradient(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of ``loss(x, t, train=True)`` by backpropagation; same keys and shapes as ``params``."""
        self.loss(x, t, train=True)

        dout = self.last_layer.backward(1.0)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)

        grads: dict[str, np.ndarray] = {}
        lam = self.weight_decay_lambda
        for idx in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{idx}"]
            grads[f"W{idx}"] = affine.dW + lam * self.params[f"W{idx}"] if lam else affine.dW
            grads[f"b{idx}"] = affine.db
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                bn = self.layers[f"BatchNorm{idx}"]
                grads[f"gamma{idx}"] = bn.dgamma
                grads[f"beta{idx}"] = bn.dbeta
        return grads
