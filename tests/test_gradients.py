"""Backpropagation against numerical differentiation, for every parameter of small nets (float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model import MultiLayerNet
from model.layers import BatchNormalization, Relu, Sigmoid

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


def small_problems(activation: str, use_batchnorm: bool, weight_decay_lambda: float, count: int):
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
            rng=rng,
        )
        x = rng.standard_normal((4, 6))
        t = rng.integers(0, 3, size=4)
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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_shift_is_the_row_maximum_even_for_ties_infinities_and_nan(dtype):
    """The shift is read at each row's argmax: it must be exactly the row maximum, in the scores' dtype, for
    ties, infinite and NaN scores too (a diverged net's NaN must reach the loss, not be skipped)."""
    from model.layers import _softmax_parts

    inf, nan = np.inf, np.nan
    x = np.array(
        [[1.5, 3.0, 3.0], [-inf, -inf, -inf], [2.0, inf, 1.0], [0.5, nan, 9.0], [-1e30, -2e30, -3e30]], dtype=dtype
    )
    with np.errstate(invalid="ignore", over="ignore"):
        shifted, e, sums = _softmax_parts(x)
        np.testing.assert_array_equal(shifted, x - x.max(axis=1, keepdims=True))
    assert shifted.dtype == e.dtype == sums.dtype == np.dtype(dtype)
    np.testing.assert_allclose(sums[[0, 4]], np.exp(shifted[[0, 4]]).sum(axis=1), rtol=1e-6)
    assert np.isnan(sums[[1, 2, 3]]).all()


def test_the_shared_ones_vector_cannot_be_changed():
    """column_sums multiplies by one cached ones vector per (length, dtype): writing to it must fail, or every
    later sum would be wrong."""
    from model.layers import _ones, column_sums

    ones = _ones(3, np.dtype("float64"))
    assert ones is _ones(3, np.dtype("float64"))
    with pytest.raises(ValueError):
        ones[0] = 2.0
    a = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(column_sums(a), [6.0, 9.0])
    assert column_sums(a.astype(np.float32)).dtype == np.float32


def _layer_pair(kind: str, rng: np.random.Generator):
    """The same layer twice, without and with ``inplace`` (batchnorm with equal, separate parameters)."""
    if kind == "batchnorm":
        gamma, beta = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
        return (BatchNormalization(gamma.copy(), beta.copy()),
                BatchNormalization(gamma.copy(), beta.copy(), inplace=True))
    cls = {"relu": Relu, "sigmoid": Sigmoid}[kind]
    return cls(), cls(inplace=True)


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "batchnorm"])
def test_inplace_layers_write_over_what_they_are_given_and_compute_the_same(kind):
    """``inplace=True`` changes where a training pass writes, never what it computes; by default nothing a layer is
    given is changed."""
    rng = np.random.default_rng(7)
    x, dout = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    plain, inplace = _layer_pair(kind, rng)

    x_plain, dout_plain = x.copy(), dout.copy()
    out = plain.forward(x_plain, True)
    dx = plain.backward(dout_plain)
    np.testing.assert_array_equal(x_plain, x)  # the default leaves its arguments alone
    np.testing.assert_array_equal(dout_plain, dout)

    x_own, dout_own = x.copy(), dout.copy()
    out_own = inplace.forward(x_own, True)
    dx_own = inplace.backward(dout_own)
    assert dx_own is dout_own
    if kind == "batchnorm":
        assert inplace.xc is x_own  # the centred input it keeps is written over x
        np.testing.assert_array_equal(inplace.dgamma, plain.dgamma)
        np.testing.assert_array_equal(inplace.dbeta, plain.dbeta)
        np.testing.assert_array_equal(inplace.running_mean, plain.running_mean)
    else:
        assert out_own is x_own
    np.testing.assert_array_equal(out_own, out)
    np.testing.assert_array_equal(dx_own, dx)


@pytest.mark.parametrize(("activation", "use_batchnorm"), itertools.product(("relu", "sigmoid"), (False, True)))
def test_a_net_of_inplace_layers_computes_what_copying_layers_do_and_leaves_the_data_alone(activation, use_batchnorm):
    """The net builds batchnorm and its activations with ``inplace=True``. Its gradients, predictions and
    evaluation are bit for bit those of the same net with every layer copying, and the data it is given is never
    changed (its first layer, an Affine, reads the data and writes nothing over it)."""

    def build() -> MultiLayerNet:
        return MultiLayerNet(6, [5, 4], 3, activation=activation, weight_init_std=1.0,
                             use_batchnorm=use_batchnorm, rng=3)

    rng = np.random.default_rng(11)
    x, t = rng.standard_normal((10, 6)), rng.integers(0, 3, 10)
    x_before = x.copy()
    net, copying = build(), build()
    assert all(layer.inplace for name, layer in net.layers.items() if not name.startswith("Affine"))
    for layer in copying.layers.values():
        if hasattr(layer, "inplace"):
            layer.inplace = False

    for _ in range(2):  # the second round runs on the running statistics and the updated parameters
        grads, expected = net.gradient(x, t), copying.gradient(x, t)
        for key in expected:
            np.testing.assert_array_equal(grads[key], expected[key], err_msg=key)
        np.testing.assert_array_equal(net.predict(x), copying.predict(x))
        np.testing.assert_array_equal(net.predict(x, train=True), copying.predict(x, train=True))
        assert net.evaluate(x, t) == copying.evaluate(x, t)
        for n in (net, copying):
            n.param_buffer -= 0.1 * n.grad_buffer
    np.testing.assert_array_equal(x, x_before)
