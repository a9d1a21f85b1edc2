"""Training: labelled data -> neighbour graphs -> ensemble of per-element MLPs.

The names in ``__all__`` load on first use (:mod:`mlip_md.uq` builds on :mod:`.data` while the
trainer builds on :mod:`mlip_md.uq`).
"""

__all__ = ["LossWeights", "TrainConfig", "read_structures", "split_train_val", "train_ensemble"]


def __getattr__(name):
    if name == "read_structures":
        from .data import read_structures

        return read_structures
    if name == "LossWeights":
        from .loss import LossWeights

        return LossWeights
    if name in ("TrainConfig", "split_train_val", "train_ensemble"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mlip_md.train' has no attribute {name!r}")
