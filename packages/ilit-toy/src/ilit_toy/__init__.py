"""A numpy toy framework for testing ilit-core: MLP models whose dense ops are really integer-quantized."""

from .adaptor import ToyAdaptor
from .metric import ToyAccuracy
from .model import Dense, ToyModel, accuracy, add_outlier_channel, make_chain_model, make_dataset, make_model

__all__ = ["ToyAdaptor", "ToyAccuracy", "Dense", "ToyModel", "accuracy", "add_outlier_channel", "make_chain_model",
           "make_dataset", "make_model"]
