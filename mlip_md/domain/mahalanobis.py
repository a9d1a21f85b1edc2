"""Mahalanobis T^2 of descriptors against the training distribution of their element.

T^2(x) = (x - mu)^T Sigma_reg^-1 (x - mu) with the shrunk covariance
Sigma_reg = (1 - a) Sigma + a tr(Sigma)/D I (Ledoit-Wolf-style target, fixed weight a), so the
inverse exists even when there are fewer environments than dimensions or the descriptors are
collinear. For Gaussian descriptors T^2 ~ chi^2 with tr(Sigma_reg^-1 Sigma) (= D when a = 0)
degrees of freedom; real descriptors are heavier-tailed, so the empirical quantile of the
training set is the default threshold and the chi^2 one is reported beside it.
"""
from __future__ import annotations

from typing import Tuple

import torch


def fit_mahalanobis(features: torch.Tensor, shrinkage: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Mean [D], regularised precision [D, D] and effective dof of ``features`` [n, D]."""
    n, d = features.shape
    if n < 2:
        raise ValueError(f"need at least 2 environments to fit a covariance, got {n}; add training data")
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    mu = features.mean(dim=0)
    cov = torch.cov(features.T).reshape(d, d)
    scale = cov.diagonal().mean()
    if not bool(scale > 0):
        raise ValueError("all training descriptors are identical: the covariance is degenerate; "
                         "train on more varied structures")
    cov_reg = (1.0 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=cov.dtype)
    precision = torch.linalg.inv(cov_reg)
    precision = 0.5 * (precision + precision.T)
    return mu, precision, float(torch.trace(precision @ cov))


def t_squared(features: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    delta = features - mu
    return ((delta @ precision) * delta).sum(dim=1)
