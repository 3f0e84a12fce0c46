"""Pure-NumPy multi-layer nets with batch normalization, after *Deep Learning from Scratch* (ch. 6)."""

from model.network import MultiLayerNet
from model.optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, Momentum, make_optimizer
from model.training import History, iter_epochs, train
from model.trial import iter_trial, run_trial

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "History",
    "Momentum",
    "MultiLayerNet",
    "iter_epochs",
    "iter_trial",
    "make_optimizer",
    "run_trial",
    "train",
]
