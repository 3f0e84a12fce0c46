"""BatchNormalization: batch statistics in training, running statistics in inference, as in the book."""

from __future__ import annotations

import numpy as np
import pytest

from model import SGD, MultiLayerNet
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


def test_training_mode_without_updating_leaves_the_running_statistics_alone():
    bn = make_bn(momentum=0.5)
    x = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 11.0]])
    out = bn.forward(x, train=True, update_running=False)
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    np.testing.assert_array_equal(bn.running_var, np.zeros(3))
    np.testing.assert_array_equal(out, make_bn(momentum=0.5).forward(x, train=True))  # the same normalization


def _epoch_zero_net() -> tuple[MultiLayerNet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    net = MultiLayerNet(4, [3], 2, weight_init_std=0.5, use_batchnorm=True, rng=rng)
    return net, rng.normal(size=(6, 4)), rng.integers(0, 2, 6)


def test_epoch_zero_loss_of_a_batchnorm_net_uses_batch_statistics_by_hand():
    """Epoch 0 reports the loss as the net trains (batch statistics of the whole training subset), not with its
    running statistics, which are still zeros then (1 / sqrt(0 + eps) = 1000 would blow the scores up)."""
    from model.training import train

    net, x, t = _epoch_zero_net()
    W1, W2, b2 = (net.params[k].copy() for k in ("W1", "W2", "b2"))
    h = x @ W1  # b1 is 0; gamma 1, beta 0
    h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-6)
    scores = np.maximum(h, 0.0) @ W2 + b2
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(6), t]))

    history = train(net, SGD(0.1), x, t, epochs=0, batch_size=6, rng=0)
    assert history.train_loss == [pytest.approx(expected, rel=1e-12)]
    assert net.loss(x, t, train=False) > 10 * expected  # what the zero running statistics would have reported


def test_epoch_zero_record_changes_nothing_and_is_the_same_computed_twice():
    """The epoch-0 measurement leaves the running statistics as they were (zeros), so measuring it twice gives the
    same record, and training after it is what it would have been."""
    from model.training import iter_epochs

    net, x, t = _epoch_zero_net()
    first = net.batch_stats_loss(x, t)
    assert net.batch_stats_loss(x, t) == first
    for key in ("BatchNorm1",):
        np.testing.assert_array_equal(net.layers[key].running_mean, np.zeros(3))
        np.testing.assert_array_equal(net.layers[key].running_var, np.zeros(3))
    records = list(iter_epochs(net, SGD(0.1), x, t, epochs=2, batch_size=3, rng=4))
    assert records[0] == (0, {"train_acc": records[0][1]["train_acc"], "train_loss": first})

    fresh, _, _ = _epoch_zero_net()
    again = list(iter_epochs(fresh, SGD(0.1), x, t, epochs=2, batch_size=3, rng=4))
    assert again == records  # the same run, with an extra epoch-0 measurement before it above
    assert records[2][1]["train_loss"] != first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    bn = BatchNormalization(np.ones(3, dtype), np.zeros(3, dtype))
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(dtype)
    assert bn.forward(x, train=True).dtype == dtype
    assert bn.backward(np.ones_like(x)).dtype == dtype
    assert bn.dgamma.dtype == bn.dbeta.dtype == dtype
    assert bn.running_mean.dtype == bn.running_var.dtype == dtype
    assert bn.forward(x, train=False).dtype == dtype
