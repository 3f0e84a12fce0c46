"""BatchNormalization: batch statistics in training, running statistics in inference, as in the book."""

from __future__ import annotations

import numpy as np
import pytest

from model import MultiLayerNet
from model.layers import BatchNormalization


def make_bn(features: int = 3, **kwargs) -> BatchNormalization:
    return BatchNormalization(np.ones(features), np.zeros(features), **kwargs)


def test_training_mode_standardizes_each_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[5.0, -3.0, 0.0], scale=[2.0, 0.1, 10.0], size=(64, 3))
    out = make_bn().forward(x, train=True)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)
    # the biased variance becomes var / (var + eps): 1 up to eps / var
    np.testing.assert_allclose(out.var(axis=0), x.var(axis=0) / (x.var(axis=0) + 1e-6), rtol=1e-12)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-3)


def test_training_mode_applies_gamma_and_beta():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 2))
    gamma, beta = np.array([2.0, 0.5]), np.array([1.0, -4.0])
    out = BatchNormalization(gamma, beta).forward(x, train=True)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-5)


def test_running_statistics_after_one_and_two_batches_exact():
    """running = momentum * running + (1 - momentum) * batch_stat, starting from zeros; biased variance.
    momentum 0.75 keeps every number here exact in binary floating point."""
    bn = make_bn(2, momentum=0.75)
    np.testing.assert_array_equal(bn.running_mean, [0.0, 0.0])
    np.testing.assert_array_equal(bn.running_var, [0.0, 0.0])

    x1 = np.array([[1.0, 2.0], [3.0, 6.0]])  # mean [2, 4], biased var [1, 4]
    bn.forward(x1, train=True)
    np.testing.assert_array_equal(bn.running_mean, [0.5, 1.0])  # 0.25 * [2, 4]
    np.testing.assert_array_equal(bn.running_var, [0.25, 1.0])  # 0.25 * [1, 4]

    x2 = np.array([[-2.0, 8.0], [2.0, 8.0]])  # mean [0, 8], biased var [4, 0]
    bn.forward(x2, train=True)
    np.testing.assert_array_equal(bn.running_mean, [0.375, 2.75])  # 0.75 * [0.5, 1] + 0.25 * [0, 8]
    np.testing.assert_array_equal(bn.running_var, [1.1875, 0.75])  # 0.75 * [0.25, 1] + 0.25 * [4, 0]

    bn.forward(x2, train=False)  # inference leaves the running statistics alone
    np.testing.assert_array_equal(bn.running_mean, [0.375, 2.75])


def test_default_momentum_is_0_9():
    bn = make_bn(2)
    x1 = np.array([[1.0, 2.0], [3.0, 6.0]])
    x2 = np.array([[-2.0, 8.0], [2.0, 8.0]])
    bn.forward(x1, train=True)
    np.testing.assert_allclose(bn.running_mean, 0.1 * np.array([2.0, 4.0]), rtol=1e-15)
    bn.forward(x2, train=True)
    np.testing.assert_allclose(bn.running_mean, 0.9 * 0.1 * np.array([2.0, 4.0]) + 0.1 * np.array([0.0, 8.0]))
    np.testing.assert_allclose(bn.running_var, 0.9 * 0.1 * np.array([1.0, 4.0]) + 0.1 * np.array([4.0, 0.0]))


def test_inference_mode_uses_running_statistics():
    rng = np.random.default_rng(2)
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, 0.2, -0.3])
    bn = BatchNormalization(gamma, beta)
    for _ in range(5):
        bn.forward(rng.normal(3.0, 2.0, size=(16, 3)), train=True)
    x = rng.normal(size=(4, 3))
    expected = gamma * (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-6) + beta
    np.testing.assert_allclose(bn.forward(x, train=False), expected, rtol=1e-12)
    # not the batch statistics of x
    assert not np.allclose(bn.forward(x, train=False), bn.forward(x, train=True))


def test_inference_before_any_training_uses_zero_statistics():
    """The book's behaviour: running mean 0 and variance 0, so x / sqrt(eps)."""
    x = np.array([[1e-3, -2e-3, 0.0]])
    np.testing.assert_allclose(make_bn().forward(x, train=False), x / np.sqrt(1e-6), rtol=1e-12)


def test_eps_is_honoured_in_both_modes():
    x = np.array([[-1.0], [1.0]])  # mean 0, biased var 1
    bn = BatchNormalization(np.ones(1), np.zeros(1), eps=1.0, momentum=0.0)  # momentum 0: running = batch
    np.testing.assert_allclose(bn.forward(x, train=True), x / np.sqrt(2.0), rtol=1e-15)
    np.testing.assert_allclose(bn.forward(x, train=False), x / np.sqrt(2.0), rtol=1e-15)
    assert make_bn().eps == 1e-6


def test_momentum_is_honoured():
    bn = make_bn(1, momentum=0.5)
    bn.forward(np.array([[2.0], [6.0]]), train=True)  # mean 4, var 4
    np.testing.assert_array_equal(bn.running_mean, [2.0])
    np.testing.assert_array_equal(bn.running_var, [2.0])


def test_network_passes_eps_and_momentum_to_its_layers():
    net = MultiLayerNet(4, [3, 3], 2, use_batchnorm=True, rng=0, batchnorm_momentum=0.5, batchnorm_eps=1e-3)
    layers = [net.layers["BatchNorm1"], net.layers["BatchNorm2"]]
    assert [(bn.momentum, bn.eps) for bn in layers] == [(0.5, 1e-3), (0.5, 1e-3)]
    default = MultiLayerNet(4, [3], 2, use_batchnorm=True, rng=0).layers["BatchNorm1"]
    assert (default.momentum, default.eps) == (0.9, 1e-6)


def test_network_inference_equals_layer_by_layer_inference():
    """The net folds inference-mode batchnorm into the Affine before it; same result up to rounding."""
    rng = np.random.default_rng(3)
    net = MultiLayerNet(8, [6, 5, 4], 3, weight_init_std="he", use_batchnorm=True, rng=rng)
    for _ in range(3):
        x = rng.normal(size=(10, 8))
        net.gradient(x, rng.integers(0, 3, 10))  # moves running statistics and nothing else
    x = rng.normal(size=(7, 8))
    layerwise = x
    for layer in net.layers.values():
        layerwise = layer.forward(layerwise, train=False)
    np.testing.assert_allclose(net.predict(x, train=False), layerwise, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_batchnorm", [True, False])
def test_inference_block_folds_once_with_the_same_numbers(use_batchnorm, monkeypatch):
    """Inside ``net.inference()`` every inference pass reuses the folding made on entry: ``predict``, ``evaluate`` and
    ``accuracy`` give the very numbers they give outside, bit for bit, batchnorm's scale and shift are computed
    once per layer, and the folding is dropped on leaving (also by an exception)."""
    rng = np.random.default_rng(5)
    net = MultiLayerNet(8, [6, 5], 3, use_batchnorm=use_batchnorm, rng=rng)
    x, t = rng.normal(size=(20, 8)), rng.integers(0, 3, 20)
    for start in (0, 10):
        net.backprop(x[start : start + 10], t[start : start + 10])
        net.param_buffer -= 0.1 * net.grad_buffer
    outside = (net.predict(x), net.evaluate(x, t), net.accuracy(x[:7], t[:7]))
    calls = []
    original = BatchNormalization.inference_scale_shift
    monkeypatch.setattr(BatchNormalization, "inference_scale_shift", lambda bn: calls.append(bn) or original(bn))
    with net.inference() as same:
        assert same is net
        inside = (net.predict(x), net.evaluate(x, t), net.accuracy(x[:7], t[:7]))
    np.testing.assert_array_equal(inside[0], outside[0])
    assert inside[1:] == outside[1:]
    assert len(calls) == (2 if use_batchnorm else 0)  # once per batchnorm layer, for three passes
    with pytest.raises(RuntimeError), net.inference():
        raise RuntimeError
    net.params["W1"] *= 2.0  # outside a block, a pass folds the current parameters
    assert not np.array_equal(net.predict(x), outside[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    bn = BatchNormalization(np.ones(3, dtype), np.zeros(3, dtype))
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(dtype)
    assert bn.forward(x, train=True).dtype == dtype
    assert bn.backward(np.ones_like(x)).dtype == dtype
    assert bn.dgamma.dtype == bn.dbeta.dtype == dtype
    assert bn.running_mean.dtype == bn.running_var.dtype == dtype
    assert bn.forward(x, train=False).dtype == dtype
