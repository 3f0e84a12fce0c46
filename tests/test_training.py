"""The net, the optimizers, the training loop and run_trial: contracts of docs/design.md."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import model
from model import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    History,
    Momentum,
    MultiLayerNet,
    make_optimizer,
    run_trial,
    train,
)
from model.trial import build_trial, iter_trial, trial_rngs

# ------------------------------------------------------------------------------------------ fixtures


def blobs(n: int, seed: int, dim: int = 20, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A small learnable problem: Gaussian clusters around fixed class centres, float32 like real data."""
    centres = np.random.default_rng(123).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, classes, n)
    return (centres[t] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32), t


X_TRAIN, T_TRAIN = blobs(400, 1)
X_TEST, T_TEST = blobs(400, 2)

SMALL = {
    "weight_scale": 0.1,
    "use_batchnorm": True,
    "seed": 0,
    "train_size": 400,
    "test_size": 400,
    "epochs": 4,
    "batch_size": 64,  # 400 = 6 * 64 + 16: the last batch is smaller
    "lr": 0.1,
    "hidden_size_list": [32, 32],
}


def small_net(**kwargs) -> MultiLayerNet:
    args = {
        "input_size": 20,
        "hidden_size_list": [16, 16],
        "output_size": 10,
        "weight_init_std": 0.1,
        "rng": 0,
    }
    return MultiLayerNet(**{**args, **kwargs})


def with_ids(x: np.ndarray) -> np.ndarray:
    """x with its first column replaced by the row number, to identify samples inside batches."""
    x = x.copy()
    x[:, 0] = np.arange(len(x))
    return x


def spy_batches(net: MultiLayerNet) -> list[np.ndarray]:
    """Record the sample ids (first column) of every mini-batch ``net.gradient`` is called with."""
    seen: list[np.ndarray] = []
    real_gradient = net.gradient

    def gradient(x, t):
        seen.append(x[:, 0].astype(int))
        return real_gradient(x, t)

    net.gradient = gradient
    return seen


# ------------------------------------------------------------------------------------------ the net


def test_public_names():
    for name in ("MultiLayerNet", "SGD", "Momentum", "AdaGrad", "Adam", "make_optimizer", "train", "History"):
        assert hasattr(model, name), name
    assert OPTIMIZERS == ("sgd", "momentum", "adagrad", "adam")


def test_params_have_the_books_keys_shapes_and_initial_values():
    rng = np.random.default_rng(0)
    net = MultiLayerNet(
        input_size=784,
        hidden_size_list=[100] * 5,
        output_size=10,
        weight_init_std=0.01,
        use_batchnorm=True,
        rng=rng,
    )
    sizes = [784, 100, 100, 100, 100, 100, 10]
    expected = {}
    for i in range(1, 7):
        expected[f"W{i}"] = (sizes[i - 1], sizes[i])
        expected[f"b{i}"] = (sizes[i],)
    for i in range(1, 6):
        expected[f"gamma{i}"] = expected[f"beta{i}"] = (100,)
    assert {k: v.shape for k, v in net.params.items()} == expected
    assert all(v.dtype == np.float64 for v in net.params.values())

    replay = np.random.default_rng(0)  # W drawn in order W1..W6 as 0.01 * N(0, 1)
    for i in range(1, 7):
        np.testing.assert_array_equal(net.params[f"W{i}"], 0.01 * replay.standard_normal(expected[f"W{i}"]))
        np.testing.assert_array_equal(net.params[f"b{i}"], 0.0)
    for i in range(1, 6):
        np.testing.assert_array_equal(net.params[f"gamma{i}"], 1.0)
        np.testing.assert_array_equal(net.params[f"beta{i}"], 0.0)


@pytest.mark.parametrize(("name", "factor"), [("he", 2.0), ("relu", 2.0), ("xavier", 1.0), ("sigmoid", 1.0)])
def test_named_weight_scales(name, factor):
    net = MultiLayerNet(50, [40, 30], 10, weight_init_std=name, rng=7)
    replay = np.random.default_rng(7)
    for i, (fan_in, fan_out) in enumerate([(50, 40), (40, 30), (30, 10)], start=1):
        expected = math.sqrt(factor / fan_in) * replay.standard_normal((fan_in, fan_out))
        np.testing.assert_array_equal(net.params[f"W{i}"], expected)


def test_int_seed_equals_generator_and_batchnorm_does_not_change_weights():
    plain = MultiLayerNet(30, [20, 20], 5, weight_init_std=0.01, rng=np.random.default_rng(3))
    bn = MultiLayerNet(30, [20, 20], 5, weight_init_std=0.01, use_batchnorm=True, rng=3)
    for key, value in plain.params.items():
        np.testing.assert_array_equal(bn.params[key], value)
    assert set(bn.params) - set(plain.params) == {"gamma1", "beta1", "gamma2", "beta2"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "tanh"},
        {"weight_init_std": "kaiming"},
        {"weight_init_std": -0.1},
        {"weight_init_std": float("nan")},
        {"dtype": "float16"},
        {"hidden_size_list": [10, 0]},
        {"rng": "seed"},
        {"use_dropout": True, "dropout_ratio": 1.0},
    ],
)
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        small_net(**kwargs)


def test_loss_adds_the_books_weight_decay():
    x, t = X_TRAIN[:50], T_TRAIN[:50]
    lam = 0.3
    net = small_net(weight_decay_lambda=lam)
    no_decay = small_net()
    penalty = 0.5 * lam * sum(np.sum(net.params[f"W{i}"] ** 2) for i in (1, 2, 3))
    assert net.loss(x, t) == pytest.approx(no_decay.loss(x, t) + penalty, rel=1e-12)
    # its gradient is lambda * W on every weight matrix
    g, g0 = net.gradient(x, t), no_decay.gradient(x, t)
    np.testing.assert_allclose(g["W2"], g0["W2"] + lam * net.params["W2"], rtol=1e-12)
    np.testing.assert_array_equal(g["b2"], g0["b2"])


def test_accuracy_is_inference_mode_and_accepts_one_hot():
    net = small_net(use_batchnorm=True)
    for _ in range(3):
        net.gradient(X_TRAIN[:64], T_TRAIN[:64])  # moves the running statistics
    x, t = X_TEST[:100], T_TEST[:100]
    expected = np.mean(net.predict(x, train=False).argmax(axis=1) == t)
    assert net.accuracy(x, t) == expected
    assert net.accuracy(x, np.eye(10)[t]) == expected
    assert net.evaluate(x, t) == (pytest.approx(net.loss(x, t, train=False), rel=1e-12), expected)
    assert expected != np.mean(net.predict(x, train=True).argmax(axis=1) == t)  # batch stats differ


def test_dropout_masks_in_training_and_scales_in_inference():
    net = small_net(use_dropout=True, dropout_ratio=0.5)
    x = X_TRAIN[:200].astype(np.float64)
    assert np.array_equal(net.predict(x, train=False), net.predict(x, train=False))
    assert not np.array_equal(net.predict(x, train=True), net.predict(x, train=True))
    drop = net.layers["Dropout1"]
    h = np.ones((200, 16))
    assert 0.4 < (drop.forward(h, train=True) == 0).mean() < 0.6
    np.testing.assert_array_equal(drop.forward(h, train=False), 0.5)


# ------------------------------------------------------------------------------------------ optimizers


def test_optimizers_follow_the_books_formulas_in_place():
    w0, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    lr = 0.1

    def run(opt):
        params = {"W": w0.copy()}
        array = params["W"]
        opt.update(params, {"W": g1})
        opt.update(params, {"W": g2})
        assert params["W"] is array  # updated in place: the layers hold this array
        return array

    np.testing.assert_allclose(run(SGD(lr)), w0 - lr * g1 - lr * g2)

    v1 = -lr * g1
    v2 = 0.9 * v1 - lr * g2
    np.testing.assert_allclose(run(Momentum(lr)), w0 + v1 + v2)

    h1 = g1 * g1
    h2 = h1 + g2 * g2
    w = w0 - lr * g1 / (np.sqrt(h1) + 1e-7)
    np.testing.assert_allclose(run(AdaGrad(lr)), w - lr * g2 / (np.sqrt(h2) + 1e-7))

    b1, b2 = 0.9, 0.999
    m = v = 0.0
    w = w0.copy()
    for i, g in enumerate((g1, g2), start=1):
        m = m + (1 - b1) * (g - m)
        v = v + (1 - b2) * (g**2 - v)
        w = w - lr * math.sqrt(1 - b2**i) / (1 - b1**i) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(run(Adam(lr)), w)


def test_make_optimizer():
    for name, cls in zip(OPTIMIZERS, (SGD, Momentum, AdaGrad, Adam), strict=True):
        opt = make_optimizer(name, 0.05)
        assert isinstance(opt, cls) and opt.lr == 0.05
    with pytest.raises(ValueError, match="sgd, momentum, adagrad, adam"):
        make_optimizer("rmsprop", 0.01)
    with pytest.raises(ValueError):
        make_optimizer("sgd", -1.0)


def test_params_are_separate_arrays_the_layers_hold_and_gradient_returns_new_arrays():
    net = small_net(use_batchnorm=True, weight_decay_lambda=0.1)
    arrays = list(net.params.values())
    assert not any(np.shares_memory(p, q) for i, p in enumerate(arrays) for q in arrays[i + 1 :])
    assert net.layers["Affine1"].W is net.params["W1"] and net.layers["BatchNorm2"].gamma is net.params["gamma2"]
    first = net.gradient(X_TRAIN[:64], T_TRAIN[:64])
    second = net.gradient(X_TRAIN[64:128], T_TRAIN[64:128])
    assert list(first) == list(net.params)
    assert all(first[k].shape == p.shape and first[k].dtype == p.dtype for k, p in net.params.items())
    assert not any(np.shares_memory(g, p) for g in first.values() for p in arrays)
    assert not np.array_equal(first["W1"], second["W1"])  # the first call's result survived the second


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_the_training_loop_is_the_books_update_per_mini_batch(name, use_batchnorm):
    """``train`` gives the same numbers, bit for bit, as the book's ``optimizer.update(net.params,
    net.gradient(x, t))`` per mini-batch of the rng's permutation."""
    epochs, batch_size = 2, 64
    flat = small_net(use_batchnorm=use_batchnorm, weight_decay_lambda=0.01)
    train(flat, make_optimizer(name, 0.05), X_TRAIN, T_TRAIN, epochs=epochs, batch_size=batch_size, rng=5)

    book = small_net(use_batchnorm=use_batchnorm, weight_decay_lambda=0.01)
    optimizer, order_rng = make_optimizer(name, 0.05), np.random.default_rng(5)
    x = X_TRAIN.astype(book.dtype)
    for _ in range(epochs):
        order = order_rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            optimizer.update(book.params, book.gradient(x[batch], T_TRAIN[batch]))
    for key, p in book.params.items():
        np.testing.assert_array_equal(flat.params[key], p, err_msg=key)
        assert not np.array_equal(p, small_net(use_batchnorm=use_batchnorm).params[key]), key  # it trained


# ------------------------------------------------------------------------------------------ train()


def test_history_epoch_zero_callback_and_lengths():
    net = small_net(use_batchnorm=True)
    before = (net.batch_stats_loss(X_TRAIN, T_TRAIN), net.evaluate(X_TRAIN, T_TRAIN)[1])  # see test_batchnorm
    before_test = net.accuracy(X_TEST, T_TEST)
    calls = []
    history = train(
        net,
        SGD(0.1),
        X_TRAIN,
        T_TRAIN,
        X_TEST,
        T_TEST,
        epochs=3,
        batch_size=64,
        rng=0,
        callback=lambda epoch, record: calls.append((epoch, record)),
    )
    assert isinstance(history, History)
    assert [len(history.train_acc), len(history.train_loss), len(history.test_acc)] == [4, 4, 4]
    assert [e for e, _ in calls] == [0, 1, 2, 3]
    assert calls[0][1] == {"train_acc": before[1], "train_loss": before[0], "test_acc": before_test}
    for epoch, record in calls:
        assert record == {
            "train_acc": history.train_acc[epoch],
            "train_loss": history.train_loss[epoch],
            "test_acc": history.test_acc[epoch],
        }
        assert all(type(v) is float for v in record.values())
    # the last record is the trained net in inference mode, loss as net.loss(train=False)
    assert history.train_loss[-1] == pytest.approx(net.loss(X_TRAIN, T_TRAIN, train=False), rel=1e-12)
    assert history.test_acc[-1] == net.accuracy(X_TEST, T_TEST)
    assert history.train_acc[-1] > history.train_acc[0] + 0.3  # it learns


def test_without_test_data_test_acc_is_empty():
    history = train(small_net(), SGD(0.1), X_TRAIN, T_TRAIN, epochs=2, batch_size=100, rng=1)
    assert history.test_acc == [] and len(history.train_acc) == 3


def test_callback_returning_true_stops_training():
    stop_at = 2
    history = train(
        small_net(),
        SGD(0.1),
        X_TRAIN,
        T_TRAIN,
        X_TEST,
        T_TEST,
        epochs=10,
        batch_size=100,
        rng=0,
        callback=lambda epoch, record: epoch == stop_at,
    )
    assert len(history.train_acc) == len(history.train_loss) == len(history.test_acc) == stop_at + 1


def test_each_epoch_visits_every_sample_once_in_rng_permutation_order():
    x = with_ids(X_TRAIN)
    net = small_net()
    batches = spy_batches(net)
    train(net, SGD(0.01), x, T_TRAIN, epochs=3, batch_size=64, rng=np.random.default_rng(42))

    replay = np.random.default_rng(42)
    assert len(batches) == 3 * 7
    for epoch in range(3):
        epoch_batches = batches[epoch * 7 : (epoch + 1) * 7]
        assert [len(b) for b in epoch_batches] == [64] * 6 + [16]
        np.testing.assert_array_equal(np.concatenate(epoch_batches), replay.permutation(400))


def test_divergence_is_recorded_not_raised():
    net = small_net(weight_init_std=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either: the NaN in the history is the report
        history = train(net, SGD(1e100), X_TRAIN, T_TRAIN, epochs=3, batch_size=100, rng=0)
    assert len(history.train_loss) == 4
    assert math.isfinite(history.train_loss[0])
    assert math.isnan(history.train_loss[-1])


def test_one_hot_labels_train_identically():
    args = {"epochs": 2, "batch_size": 64, "rng": 5}
    h_int = train(small_net(use_batchnorm=True), SGD(0.1), X_TRAIN, T_TRAIN, X_TEST, T_TEST, **args)
    one_hot = np.eye(10)
    h_hot = train(small_net(use_batchnorm=True), SGD(0.1), X_TRAIN, one_hot[T_TRAIN], X_TEST, one_hot[T_TEST], **args)
    assert h_int == h_hot


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"batch_size": 0},
        {"rng": None},
        {"x_test": X_TEST},  # without t_test
        {"t_train": T_TRAIN[:-1]},
        {"x_train": X_TRAIN[:, :5]},
    ],
)
def test_bad_train_arguments_raise(kwargs):
    args = {"x_train": X_TRAIN, "t_train": T_TRAIN, "epochs": 1, "batch_size": 10, "rng": 0, **kwargs}
    with pytest.raises(ValueError):
        train(small_net(), SGD(0.1), **args)


# ------------------------------------------------------------------------------------------ run_trial


def test_same_seed_gives_bit_identical_histories_and_other_seeds_differ():
    a = run_trial(SMALL, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    b = run_trial(dict(SMALL), X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    for field in ("train_acc", "train_loss", "test_acc"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    c = run_trial({**SMALL, "seed": 1}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    assert not np.array_equal(a.train_loss, c.train_loss)


def test_run_trial_seeds_net_and_batch_order_as_the_design_says():
    """init_rng, order_rng = the two children of SeedSequence(seed); the net gets the first."""
    config = {**SMALL, "seed": 11}
    history = run_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST)

    children = np.random.SeedSequence(11).spawn(2)
    init_rng, order_rng = (np.random.default_rng(s) for s in children)
    net = MultiLayerNet(20, [32, 32], 10, weight_init_std=0.1, use_batchnorm=True, rng=init_rng)
    by_hand = train(net, SGD(0.1), X_TRAIN, T_TRAIN, X_TEST, T_TEST, epochs=4, batch_size=64, rng=order_rng)
    assert history == by_hand


def test_paired_arms_share_weights_and_mini_batches():
    """Batchnorm and plain arms of a seed: identical W/b draws, identical mini-batches in the same order."""
    x = with_ids(X_TRAIN)
    arms = {}
    for bn in (False, True):
        net, optimizer, order_rng, cfg = build_trial({**SMALL, "use_batchnorm": bn, "seed": 4}, 20, 10)
        initial = {key: value.copy() for key, value in net.params.items()}
        batches = spy_batches(net)
        train(net, optimizer, x, T_TRAIN, epochs=cfg["epochs"], batch_size=cfg["batch_size"], rng=order_rng)
        arms[bn] = initial, batches

    (plain_init, plain_batches), (bn_init, bn_batches) = arms[False], arms[True]
    for key in plain_init:  # W1..W3, b1..b3
        np.testing.assert_array_equal(bn_init[key], plain_init[key])
    assert len(plain_batches) == len(bn_batches) == 4 * 7
    for p, b in zip(plain_batches, bn_batches, strict=True):
        np.testing.assert_array_equal(p, b)
    # and another seed would give other weights and batches
    other, _, other_rng, _ = build_trial({**SMALL, "seed": 5}, 20, 10)
    assert not np.array_equal(other.params["W1"], plain_init["W1"])
    assert not np.array_equal(other_rng.permutation(400), trial_rngs(4)[1].permutation(400))


def test_iter_trial_streams_the_same_records_and_stops_when_the_consumer_does():
    history = run_trial(SMALL, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    streamed = History()
    for epoch, record in iter_trial(SMALL, X_TRAIN, T_TRAIN, X_TEST, T_TEST):
        assert epoch == len(streamed.train_acc)
        streamed.add(record)
    assert streamed == history

    net = small_net()
    batches = spy_batches(net)
    steps = model.iter_epochs(net, SGD(0.1), X_TRAIN, T_TRAIN, epochs=5, batch_size=100, rng=0)
    for epoch, _ in steps:
        if epoch == 1:
            break
    assert len(batches) == 4  # one epoch of 400 samples; nothing ran ahead


def test_iter_trial_checks_its_arguments_at_the_call():
    with pytest.raises(ValueError, match="lr"):
        iter_trial({**SMALL, "lr": 0.0}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)  # no next() needed
    with pytest.raises(ValueError, match="batch_size"):
        model.iter_epochs(small_net(), SGD(0.1), X_TRAIN, T_TRAIN, epochs=1, batch_size=0, rng=0)


def test_run_trial_uses_the_first_train_size_and_test_size_samples():
    config = {**SMALL, "train_size": 100, "test_size": 50, "epochs": 1}
    history = run_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    same = run_trial(config, X_TRAIN[:100], T_TRAIN[:100], X_TEST[:50], T_TEST[:50])
    assert history == same
    # every accuracy is a fraction of 100 (train) or 50 (test) samples
    assert all(round(a * 100) == pytest.approx(a * 100) for a in history.train_acc)
    assert all(round(a * 50) == pytest.approx(a * 50) for a in history.test_acc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight_scale": 0.0}, "weight_scale"),
        ({"weight_scale": "glorot"}, "weight_scale"),
        ({"weight_scale": "HE"}, "weight_scale"),
        ({"weight_scale": float("inf")}, "weight_scale"),
        ({"use_batchnorm": "yes"}, "use_batchnorm"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"dataset": ""}, "dataset"),
        ({"dataset": 10}, "dataset"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"weight_decay": True}, "weight_decay"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": "0.5"}, "dropout"),
        ({"train_size": 0}, "train_size"),
        ({"train_size": 401}, "train_size"),
        ({"test_size": 10_000}, "test_size"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"lr": -0.1}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"hidden_size_list": []}, "hidden_size_list"),
        ({"hidden_size_list": [100, -1]}, "hidden_size_list"),
        ({"activation": "tanh"}, "activation"),
        ({"dtype": "float16"}, "dtype"),
        ({"momentum": 0.9}, "unknown"),
    ],
)
def test_run_trial_rejects_bad_config(change, message):
    with pytest.raises(ValueError, match=message):
        run_trial({**SMALL, **change}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)


def test_run_trial_rejects_missing_keys_and_bad_labels():
    config = dict(SMALL)
    del config["seed"]
    with pytest.raises(ValueError, match="seed"):
        run_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    with pytest.raises(ValueError, match="labels"):
        run_trial(SMALL, X_TRAIN, T_TRAIN + 1, X_TEST, T_TEST)  # label 10 of 10 classes


# ------------------------------------------------------------------------------------------ float32


def forward_backward_arrays(net: MultiLayerNet, x: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """Every activation and backward signal of one training step, layer by layer."""
    arrays = []
    h = x
    for layer in net.layers.values():
        h = layer.forward(h, True)
        arrays.append(h)
    net.last_layer.forward(h, t)
    d = net.last_layer.backward(1.0)
    arrays.append(d)
    for layer in reversed(net.layers.values()):
        d = layer.backward(d)
        if d is not None:
            arrays.append(d)
    return arrays


@pytest.mark.parametrize("use_batchnorm", [False, True])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_float32_stays_float32(use_batchnorm, activation):
    net = small_net(dtype="float32", use_batchnorm=use_batchnorm, activation=activation, weight_decay_lambda=0.1)
    assert all(p.dtype == np.float32 for p in net.params.values())
    x = X_TRAIN[:64]
    assert x.dtype == np.float32
    assert all(a.dtype == np.float32 for a in forward_backward_arrays(net, x, T_TRAIN[:64]))
    grads = net.gradient(x, T_TRAIN[:64])
    assert all(g.dtype == np.float32 for g in grads.values())
    assert net.predict(x.astype(np.float64)).dtype == np.float32  # other input dtypes are converted
    for name in OPTIMIZERS:
        net = small_net(dtype="float32", use_batchnorm=use_batchnorm, activation=activation)
        train(
            net,
            make_optimizer(name, 0.01),
            X_TRAIN.astype(np.float64),
            T_TRAIN,
            epochs=1,
            batch_size=64,
            rng=0,
        )
        assert all(p.dtype == np.float32 for p in net.params.values()), name
        if use_batchnorm:
            assert net.layers["BatchNorm1"].running_var.dtype == np.float32


@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_float32_learning_curves_match_float64(use_batchnorm):
    """On a small problem float32 follows float64: accuracies within 1% (4 of 400 samples), losses
    within 1e-4 relative (measured: identical accuracies, losses within 3e-7)."""
    config = {**SMALL, "use_batchnorm": use_batchnorm, "epochs": 10, "batch_size": 50}
    h64 = run_trial({**config, "dtype": "float64"}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    h32 = run_trial({**config, "dtype": "float32"}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    np.testing.assert_allclose(h32.train_acc, h64.train_acc, atol=0.01)
    np.testing.assert_allclose(h32.test_acc, h64.test_acc, atol=0.01)
    np.testing.assert_allclose(h32.train_loss, h64.train_loss, rtol=1e-4)
    assert h64.train_acc[-1] > 0.5  # a problem that is actually learned


# ------------------------------------------------------------------------------------------ the newer axes


@pytest.mark.parametrize(
    "change",
    [{"weight_scale": "he"}, {"weight_scale": "xavier"}, {"activation": "sigmoid"}, {"weight_decay": 0.01},
     {"dropout": 0.2}, {"dataset": "idx"}, {"dataset": "mnist"}],
)
def test_every_axis_value_trains(change):
    history = run_trial({**SMALL, **change}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    assert len(history.test_acc) == SMALL["epochs"] + 1 and all(map(math.isfinite, history.train_loss))
    assert history.train_acc[-1] > history.train_acc[0]


def test_named_weight_scales_and_weight_decay_and_dropout_reach_the_net():
    net = build_trial({**SMALL, "weight_scale": "xavier", "weight_decay": 0.05, "dropout": 0.3}, 20, 10)[0]
    reference = MultiLayerNet(20, [32, 32], 10, weight_init_std="xavier", rng=trial_rngs(0)[0])
    for key in ("W1", "W2", "W3"):
        np.testing.assert_array_equal(net.params[key], reference.params[key])
    assert net.weight_decay_lambda == 0.05
    assert [layer.dropout_ratio for name, layer in net.layers.items() if name.startswith("Dropout")] == [0.3, 0.3]
    assert not any(name.startswith("Dropout") for name in build_trial(SMALL, 20, 10)[0].layers)


def test_dropout_masks_come_from_the_seed_and_both_arms_share_them():
    """Dropout masks are drawn from the seed's own rng: the same seed gives the same history, another seed
    another; the weights and mini-batch orders stay those of the seed without dropout; the two arms of a seed
    draw the same masks (same shapes, same rng)."""
    config = {**SMALL, "dropout": 0.3, "epochs": 2}
    first = run_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    assert run_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST) == first
    assert run_trial({**config, "seed": 1}, X_TRAIN, T_TRAIN, X_TEST, T_TEST) != first

    masks = {}
    for bn in (False, True):
        net, _, order_rng, _ = build_trial({**config, "use_batchnorm": bn}, 20, 10)
        net.gradient(X_TRAIN[:64], T_TRAIN[:64])
        masks[bn] = [layer.mask for name, layer in net.layers.items() if name.startswith("Dropout")]
        plain_net, _, plain_order, _ = build_trial({**SMALL, "use_batchnorm": bn}, 20, 10)  # no dropout
        np.testing.assert_array_equal(net.params["W1"], plain_net.params["W1"])
        assert order_rng.permutation(10).tolist() == plain_order.permutation(10).tolist()
    for a, b in zip(masks[False], masks[True], strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0.2 < 1 - masks[False][0].mean() < 0.4


def test_weight_decay_enters_the_reported_loss():
    base = run_trial({**SMALL, "epochs": 1}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    net = build_trial(SMALL, 20, 10)[0]
    decayed = run_trial({**SMALL, "epochs": 1, "weight_decay": 0.1}, X_TRAIN, T_TRAIN, X_TEST, T_TEST)
    penalty = 0.05 * sum(float(np.sum(net.params[f"W{i}"] ** 2)) for i in (1, 2, 3))
    assert decayed.train_loss[0] == pytest.approx(base.train_loss[0] + penalty, rel=1e-12)


# ------------------------------------------------------------------------------------------ divergence


def test_a_diverging_trial_reports_a_non_finite_loss_after_finite_ones():
    """lr=10 at weight scale 1 (5 x 100 ReLU, no batchnorm, which survives it) blows up: some epoch's train_loss is
    NaN or inf, and every record before it is finite. The model reports the accuracy it measures (a NaN score row
    predicts class 0, NumPy's argmax of NaNs); counting such a trial as chance is not the model's business, and
    the pipeline stops a trial at its first non-finite loss."""
    config = {**SMALL, "use_batchnorm": False, "weight_scale": 1.0, "lr": 10.0, "epochs": 10,
              "hidden_size_list": [100] * 5}
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, record in iter_trial(config, X_TRAIN, T_TRAIN, X_TEST, T_TEST):
            records.append(record)
            if not math.isfinite(record["train_loss"]):
                break
    assert not math.isfinite(records[-1]["train_loss"]), [r["train_loss"] for r in records]
    assert len(records) > 1 and all(math.isfinite(r["train_loss"]) for r in records[:-1])
    assert all(0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 for r in records)


def test_nan_scores_predict_class_zero():
    net = small_net()
    net.params["W1"][...] = np.nan
    with np.errstate(invalid="ignore"):
        assert net.accuracy(X_TEST, T_TEST) == float(np.mean(T_TEST == 0))
