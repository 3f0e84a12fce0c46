"""The book's finding on real Fashion-MNIST: with weights of scale 0.01, a 5x100 ReLU net does not learn
in 20 epochs, the same net with batch normalization does.

Measured (float64, seeds 0-2, 1000 train / 1000 test samples, SGD lr 0.01, batch 100, 20 epochs):
  plain:     final train acc 0.115 (every seed: it predicts one class), test 0.095, train loss 2.3016
  batchnorm: final train acc 0.969 / 0.944 / 0.919, test 0.775 / 0.756 / 0.731, train loss 0.25-0.39
The thresholds below leave wide margins around these numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from model import run_trial
from model.trial import DEFAULT_CONFIG

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
#: The book's setting (model.trial.DEFAULT_CONFIG: 1000 samples, 20 epochs, SGD lr 0.01, batch 100) at W=0.01.
CONFIG = dict(DEFAULT_CONFIG, weight_scale=0.01)


@pytest.fixture(scope="module")
def fashion_mnist():
    from pipeline.data import DatasetError, load_dataset

    try:
        return load_dataset("fashion-mnist", download=False)  # nothing downloads at test time
    except DatasetError as exc:
        pytest.fail(f"real Fashion-MNIST is missing: apt-get install dataset-fashion-mnist ({exc})")


@pytest.fixture(scope="module")
def histories(fashion_mnist):
    (x_train, t_train), (x_test, t_test) = fashion_mnist
    return {
        (seed, bn): run_trial({**CONFIG, "seed": seed, "use_batchnorm": bn}, x_train, t_train, x_test, t_test)
        for seed in SEEDS
        for bn in (False, True)
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_net_stays_near_chance(histories, seed):
    h = histories[seed, False]
    assert len(h.train_acc) == len(h.test_acc) == len(h.train_loss) == CONFIG["epochs"] + 1
    assert max(h.train_acc) <= 0.2
    assert max(h.test_acc) <= 0.2
    # the loss never leaves ln(10): the outputs stay uniform over the 10 classes
    np.testing.assert_allclose(h.train_loss, math.log(10), atol=0.05)


@pytest.mark.parametrize("seed", SEEDS)
def test_batchnorm_net_learns(histories, seed):
    h = histories[seed, True]
    assert h.train_acc[0] <= 0.2  # epoch 0: untrained
    assert h.train_acc[-1] >= 0.8
    assert h.test_acc[-1] >= 0.65
    assert h.train_loss[-1] <= 0.8


@pytest.mark.parametrize("seed", SEEDS)
def test_batchnorm_beats_the_plain_net_of_the_same_seed(histories, seed):
    plain, bn = histories[seed, False], histories[seed, True]
    assert bn.train_acc[-1] - plain.train_acc[-1] >= 0.5
    assert bn.test_acc[-1] - plain.test_acc[-1] >= 0.4
