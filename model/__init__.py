"""Pure-NumPy multi-layer nets with batch normalization, after *Deep Learning from Scratch* (ch. 6)."""

from model.network import MultiLayerNet
from model.optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, Momentum, make_optimizer
from model.training import History, train
from model.trial import run_trial

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "History",
    "Momentum",
    "MultiLayerNet",
    "make_optimizer",
    "run_trial",
    "train",
]
