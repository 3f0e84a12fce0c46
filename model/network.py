"""``MultiLayerNet``: the book's ``MultiLayerNetExtend`` (ch. 6) with an explicit rng and dtype."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

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
    They are views into one flat array, ``param_buffer``; ``grads`` (filled by ``backprop``) holds the
    gradients the same way in ``grad_buffer``.

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

        shapes: dict[str, tuple[int, ...]] = {}
        for idx in range(1, len(sizes)):
            shapes[f"W{idx}"], shapes[f"b{idx}"] = (sizes[idx - 1], sizes[idx]), (sizes[idx],)
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                shapes[f"gamma{idx}"] = shapes[f"beta{idx}"] = (sizes[idx],)
        # Every parameter is a view into one flat array, and its gradient a view into another of the same
        # layout, so that an elementwise optimizer can update all of them at once (see ``backprop``).
        self.param_buffer, self.params = _views(shapes, self.dtype)
        self.grad_buffer, self.grads = _views(shapes, self.dtype)
        for idx in range(1, len(sizes)):
            scale = init_scale(weight_init_std, sizes[idx - 1])
            # drawn in float64 whatever the dtype, so float32 and float64 nets start from the same weights
            self.params[f"W{idx}"][...] = scale * rng.standard_normal(shapes[f"W{idx}"])
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                self.params[f"gamma{idx}"][...] = 1.0

        def affine(idx: int) -> Affine:
            # the first layer's input is the data: its gradient is never needed
            return Affine(self.params[f"W{idx}"], self.params[f"b{idx}"], need_dx=idx > 1,
                          dW=self.grads[f"W{idx}"], db=self.grads[f"b{idx}"])

        # Batchnorm and the activations work in place (``inplace=True``): each is given an array no one else holds,
        # the fresh output of the layer before it (an Affine's product, batchnorm's output) going forward and the
        # fresh dx of the layer after it going back. The first layer, an Affine, never writes over its input, so the
        # caller's data is never changed.
        self.layers: dict[str, object] = {}
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = affine(idx)
            if self.use_batchnorm:
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(
                    self.params[f"gamma{idx}"],
                    self.params[f"beta{idx}"],
                    momentum=batchnorm_momentum,
                    eps=batchnorm_eps,
                    dgamma=self.grads[f"gamma{idx}"],
                    dbeta=self.grads[f"beta{idx}"],
                    inplace=True,
                )
            self.layers[f"Activation_function{idx}"] = ACTIVATIONS[activation](inplace=True)
            if self.use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ratio, rng=rng)
        self.layers[f"Affine{self.hidden_layer_num + 1}"] = affine(self.hidden_layer_num + 1)
        self.last_layer = SoftmaxWithLoss()
        self._folded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # see inference()

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
        Inside :meth:`inference` the folding made on entry serves every pass.
        """
        folded = self._folded if self._folded is not None else self._fold()
        for name, layer in self.layers.items():
            if isinstance(layer, BatchNormalization):
                continue  # folded into the Affine before it
            if name in folded:
                W, b = folded[name]
                x = x @ W
                x += b
            else:
                x = layer.forward(x, train=False)
        return x

    def _fold(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{Affine name: (W * scale, b * scale + shift)}`` for each Affine followed by a BatchNorm."""
        folded = {}
        for name, layer in self.layers.items():
            bn = self.layers.get(name.replace("Affine", "BatchNorm")) if isinstance(layer, Affine) else None
            if isinstance(bn, BatchNormalization):
                scale, shift = bn.inference_scale_shift()
                folded[name] = (layer.W * scale, layer.b * scale + shift)
        return folded

    @contextlib.contextmanager
    def inference(self) -> Iterator[MultiLayerNet]:
        """A block of inference passes (``predict(train=False)``, ``accuracy``, ``evaluate``) over one set of
        parameters: batchnorm is folded into the weights once, on entry, rather than once per pass. The training
        loop evaluates the train and the test split this way after each epoch: one folding instead of two, 0.7 % of a
        float64 batchnorm trial (``benchmarks/ab_trial.py``). Nothing may change the parameters or the running
        statistics inside the block."""
        self._folded = self._fold() if self.use_batchnorm else None
        try:
            yield self
        finally:
            self._folded = None

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

    def backprop(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of ``loss(x, t, train=True)`` by backpropagation, written into ``self.grads``.

        ``self.grads`` has the keys and shapes of ``params``; its arrays are views into ``grad_buffer``, laid out
        as ``params`` is in ``param_buffer``, and the next call overwrites them (``gradient`` returns copies).
        The training loop uses this: an elementwise optimizer given ``{"all": param_buffer}`` and
        ``{"all": grad_buffer}`` updates every parameter with the very numbers it would compute array by array,
        in 2 NumPy calls per step instead of 2 per array (44 with batchnorm; about 4 % of a trial).
        """
        self.loss(x, t, train=True)

        dout = self.last_layer.backward(1.0)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)  # each layer writes its parameters' gradients into self.grads

        if self.weight_decay_lambda:
            for idx in range(1, self.hidden_layer_num + 2):
                self.grads[f"W{idx}"] += self.weight_decay_lambda * self.params[f"W{idx}"]
        return self.grads

    def gradient(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of ``loss(x, t, train=True)`` by backpropagation; same keys and shapes as ``params``."""
        return {key: grad.copy() for key, grad in self.backprop(x, t).items()}


def _views(shapes: dict[str, tuple[int, ...]], dtype: np.dtype) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One zeroed flat array and, per key, a view of it with that shape (laid out in key order)."""
    buffer = np.zeros(sum(math.prod(shape) for shape in shapes.values()), dtype=dtype)
    views, start = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape)
        views[key] = buffer[start : start + size].reshape(shape)
        start += size
    return buffer, views
