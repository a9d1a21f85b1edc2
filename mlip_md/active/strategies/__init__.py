"""Query strategies behind one interface (:class:`Strategy.select`)."""
from .adversarial import AdversarialStrategy, EnsembleObjective, attack
from .base import SelectionContext, Strategy, fingerprint, unique_in_order
from .d_optimal import DOptimalStrategy, greedy_d_optimal, logdet_gain
from .max_variance import MaxVarianceStrategy
from .random import RandomStrategy
from .variance_d_optimal import VarianceDOptimalStrategy

STRATEGY_CLASSES = {cls.name: cls for cls in
                    (RandomStrategy, MaxVarianceStrategy, DOptimalStrategy, AdversarialStrategy,
                     VarianceDOptimalStrategy)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGY_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown query strategy {name!r}; choose one of {', '.join(STRATEGY_CLASSES)}") from None


__all__ = ["AdversarialStrategy", "DOptimalStrategy", "EnsembleObjective", "MaxVarianceStrategy",
           "RandomStrategy", "STRATEGY_CLASSES", "SelectionContext", "Strategy", "VarianceDOptimalStrategy", "attack",
           "fingerprint", "get_strategy", "greedy_d_optimal", "logdet_gain", "unique_in_order"]
