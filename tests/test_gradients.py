"""Backpropagation against numerical differentiation, for every parameter of small nets (float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model import MultiLayerNet
from model.layers import BatchNormalization, Dropout, Relu

H = 1e-3  # step of the fourth-order central difference below
RELU_MARGIN = 0.05  # ReLU inputs at least this far from the kink: a 2*H step of any parameter cannot cross it
MIN_BN_STD = 0.3  # batchnorm inputs with a tiny batch spread make the loss too curved for any finite step
MAX_REL_ERR = 1e-6
ZERO_GRAD = 1e-12  # an analytic gradient this small is a structural zero (see check_gradients)
ZERO_NUM_GRAD = 1e-10  # ...and then the numerical one must be roundoff-small too


def numerical_gradient(f, p: np.ndarray, h: float = H) -> np.ndarray:
    """d f / d p by the fourth-order central difference
    (-f(p+2h) + 8 f(p+h) - 8 f(p-h) + f(p-2h)) / 12h, one element at a time, p changed in place.

    Its truncation error is O(h^4), so h can be large enough (1e-3) that float64 roundoff, about
    1e-16 * |f| / h, stays far below the tolerance even for small gradient entries; the plain
    two-point difference at h=1e-5 misses 1e-6 relative error on entries of ~1e-7."""
    grad = np.zeros_like(p)
    for idx in np.ndindex(p.shape):
        orig = p[idx]
        values = []
        for step in (2, 1, -1, -2):
            p[idx] = orig + step * h
            values.append(f())
        p[idx] = orig
        grad[idx] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
    return grad


def relative_error(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), np.finfo(np.float64).tiny)


def is_well_posed(net: MultiLayerNet, x: np.ndarray) -> bool:
    """The training-mode forward pass keeps ReLU inputs away from 0, leaves no ReLU unit dead for the
    whole batch, and gives batchnorm inputs a reasonable spread: the loss is smooth near the weights."""
    h = x
    for layer in net.layers.values():
        if isinstance(layer, Relu):
            if np.abs(h).min() < RELU_MARGIN or not (h > 0).any(axis=0).all():
                return False
        if isinstance(layer, BatchNormalization) and h.std(axis=0).min() < MIN_BN_STD:
            return False
        h = layer.forward(h, True)
    return True


class FixedMask:
    """Stands in for a Dropout layer's rng: ``random`` always gives values whose comparison yields ``mask``."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def random(self, shape):
        assert shape == self.mask.shape
        return np.where(self.mask, 1.0, 0.0)


def layer_width(net: MultiLayerNet, dropout: Dropout) -> int:
    """The width of the hidden layer a Dropout layer follows."""
    names = [name for name, layer in net.layers.items() if layer is dropout]
    return net.hidden_size_list[int(names[0].removeprefix("Dropout")) - 1]


def small_problems(activation: str, use_batchnorm: bool, weight_decay_lambda: float, count: int, dropout: float = 0.0):
    """The first ``count`` seeds giving a well-posed net (input 6, hidden [5, 4], 3 classes, batch 4)."""
    found = 0
    for seed in itertools.count():
        assert seed < 500, "no well-posed small problem among 500 seeds"
        rng = np.random.default_rng(seed)
        net = MultiLayerNet(
            input_size=6,
            hidden_size_list=[5, 4],
            output_size=3,
            activation=activation,
            weight_init_std=1.0,
            weight_decay_lambda=weight_decay_lambda,
            use_batchnorm=use_batchnorm,
            use_dropout=dropout > 0,
            dropout_ratio=dropout,
            rng=rng,
        )
        x = rng.standard_normal((4, 6))
        t = rng.integers(0, 3, size=4)
        for layer in net.layers.values():
            if isinstance(layer, Dropout):  # one mask per layer, held fixed: the loss is then smooth
                layer.rng = FixedMask(rng.random((4, layer_width(net, layer))) > dropout)
        if is_well_posed(net, x):
            yield seed, net, x, t
            found += 1
            if found == count:
                return


def check_gradients(net: MultiLayerNet, x: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Max relative error per parameter; asserts structural zeros match. Returns the errors."""
    analytic = net.gradient(x, t)
    assert analytic.keys() == net.params.keys()
    errors = {}
    for key, p in net.params.items():
        a = analytic[key]
        assert a.shape == p.shape and a.dtype == np.float64, key
        n = numerical_gradient(lambda: net.loss(x, t, train=True), p)
        # A structural zero (a bias feeding batchnorm, whose mean subtraction cancels it; a weight on
        # a path that ReLU closes for the whole batch) has no meaningful relative error: analytic
        # ~1e-17 against numerical roundoff ~1e-14. Both must be roundoff-small instead.
        zero = np.abs(a) <= ZERO_GRAD
        assert np.all(np.abs(n[zero]) <= ZERO_NUM_GRAD), (key, a[zero], n[zero])
        errors[key] = float(relative_error(a[~zero], n[~zero]).max()) if (~zero).any() else 0.0
    return errors


CASES = [(activation, bn, lam) for activation in ("relu", "sigmoid") for bn in (False, True) for lam in (0.0, 0.1)]


@pytest.mark.parametrize(("activation", "use_batchnorm", "weight_decay_lambda"), CASES)
def test_backprop_matches_numerical_gradient(activation, use_batchnorm, weight_decay_lambda):
    for seed, net, x, t in small_problems(activation, use_batchnorm, weight_decay_lambda, count=3):
        errors = check_gradients(net, x, t)
        worst = max(errors.values())
        assert worst < MAX_REL_ERR, f"seed {seed}: relative errors {errors}"


def test_bias_before_batchnorm_has_zero_gradient_and_others_do_not():
    """Batchnorm subtracts the batch mean, so the bias of the Affine feeding it cannot change the loss;
    every other parameter has a non-zero gradient (so the check above is not vacuous)."""
    _, net, x, t = next(small_problems("relu", True, 0.1, count=1))
    grads = net.gradient(x, t)
    for key, g in grads.items():
        if key in ("b1", "b2"):
            assert np.abs(g).max() < ZERO_GRAD, key
        else:
            assert np.abs(g).max() > 1e-4, key


def test_one_hot_labels_give_the_same_gradient():
    _, net, x, t = next(small_problems("sigmoid", True, 0.1, count=1))
    by_label = net.gradient(x, t)
    by_one_hot = net.gradient(x, np.eye(3)[t])
    for key in by_label:
        np.testing.assert_array_equal(by_label[key], by_one_hot[key])


def test_first_layer_computes_no_input_gradient():
    """Speed contract: the gradient with respect to the data is never formed."""
    _, net, x, t = next(small_problems("relu", False, 0.0, count=1))
    first, second = net.layers["Affine1"], net.layers["Affine2"]
    net.gradient(x, t)
    assert first.backward(np.ones((4, 5))) is None
    assert second.backward(np.ones((4, 4))).shape == (4, 5)


def test_softmax_cross_entropy_is_stable_for_huge_scores():
    """log-sum-exp: finite loss and exact probabilities where exp(score) would overflow."""
    from model.layers import SoftmaxWithLoss, softmax_cross_entropy

    scores = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 800.0]])
    t = np.array([2, 0])
    layer = SoftmaxWithLoss()
    loss = layer.forward(scores, t)
    # sample 0: 2000 - log(1 + e^-1000 + ...) ~ 2000; sample 1: 800 + log 2
    assert loss == pytest.approx((2000.0 + 800.0 + np.log(2.0)) / 2, rel=1e-12)
    assert softmax_cross_entropy(scores, t) == loss
    np.testing.assert_allclose(layer.y, [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], atol=1e-300)
    dx = layer.backward()
    np.testing.assert_allclose(dx, [[0.5, 0.0, -0.5], [-0.5, 0.25, 0.25]])


def test_softmax_of_nan_or_infinite_scores_is_nan_so_a_diverged_loss_is_nan():
    """A diverged net's NaN/inf scores must reach the loss as NaN, never be skipped or clipped to a finite value."""
    from model.layers import softmax_cross_entropy

    x = np.array([[0.5, np.nan, 9.0], [2.0, np.inf, 1.0], [1.0, 2.0, 3.0]])
    with np.errstate(invalid="ignore"):
        assert np.isnan(softmax_cross_entropy(x[:1], [0])) and np.isnan(softmax_cross_entropy(x[1:2], [1]))
    assert softmax_cross_entropy(x[2:], [2]) == pytest.approx(np.log(np.exp([-2.0, -1.0, 0.0]).sum()), rel=1e-15)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_backprop_through_dropout_with_a_fixed_mask_matches_numerical_gradient(activation, use_batchnorm):
    """Dropout (with weight decay too): each mask is drawn once and then held fixed, so the training loss is a
    smooth function of the parameters that the numerical gradient can check."""
    for seed, net, x, t in small_problems(activation, use_batchnorm, 0.1, count=2, dropout=0.3):
        net.loss(x, t, train=True)
        masks = [layer.mask for layer in net.layers.values() if isinstance(layer, Dropout)]
        assert len(masks) == 2 and all(m.any() and not m.all() for m in masks)
        errors = check_gradients(net, x, t)
        assert max(errors.values()) < MAX_REL_ERR, f"seed {seed}: relative errors {errors}"


@pytest.mark.parametrize(("name", "factor"), [("he", 2.0), ("xavier", 1.0)])
def test_he_and_xavier_draw_weights_of_std_sqrt_factor_over_fan_in(name, factor):
    """784-100-100-10 with 'he' or 'xavier': every W has std sqrt(factor / fan_in) within sampling error (the std
    of n normal draws has relative standard error 1/sqrt(2n): at most 2.2 % for the 1000 weights of W3; 5 SE)."""
    net = MultiLayerNet(784, [100, 100], 10, weight_init_std=name, rng=0)
    for key, fan_in in (("W1", 784), ("W2", 100), ("W3", 100)):
        w = net.params[key]
        expected = np.sqrt(factor / fan_in)
        assert abs(w.std() / expected - 1) < 5 / np.sqrt(2 * w.size), (key, w.std(), expected)
        assert abs(w.mean()) < 5 * expected / np.sqrt(w.size)
