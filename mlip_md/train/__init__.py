"""Training: labelled data -> neighbour graphs -> ensemble of per-element MLPs."""
from .data import read_structures
from .loss import LossWeights
from .trainer import TrainConfig, split_train_val, train_ensemble

__all__ = ["LossWeights", "TrainConfig", "read_structures", "split_train_val", "train_ensemble"]
