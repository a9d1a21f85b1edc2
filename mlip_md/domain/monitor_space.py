"""The bounded space of the domain monitors: T^2 and d_min at a cost and memory that do not grow
with the number of elements.

All elements share a centre c [D] and an orthonormal projection V [D, P] of the standardised
descriptors x [D] (P = min(D, 32) by default, see :data:`DEFAULT_COMPONENTS`). An environment's
monitor coordinates are

    z = V^T (x - c)              [P]   component scores
    r = sqrt(|x - c|^2 - |z|^2)        distance of x from the P-dimensional subspace (r^2 is the
                                       squared prediction error, SPE or Q, of PCA process monitoring)

V is built from (i) the directions of the element means m_s - c (c: their average), so that every
element's mean lies in the subspace and r is the same whichever element's mean it is measured
from, then (ii) the leading eigenvectors, orthogonal to those, of the within-element covariance
averaged over elements with equal weights (a rare element's directions count as much as a common
one's). Per element s the model stores mu_s = V^T (m_s - c) [P], the precision Pi_s [P, P] of the
regularised component covariance and a residual weight w_s, and scores

    T^2_s(x) = (z - mu_s)^T Pi_s (z - mu_s) + w_s r^2.

That is the Mahalanobis distance of x under the element covariance model
V A_s V^T + (1 / w_s) (I - V V^T): the full regularised covariance inside the subspace and one
isotropic variance outside it, so a departure in a direction outside the P components still
raises T^2. With C_s the element's covariance, tau_s = tr(C_s) / D and a the shrinkage,

    A_s = (1 - a) V^T C_s V + a tau_s I          (as mahalanobis.py shrinks the full covariance;
                                                   P = D gives exactly its dense T^2)
    R_s = (1 - a) (I - V V^T) C_s (I - V V^T) + a tau_s (I - V V^T)   (residual covariance)
    w_s = tr(R_s) / tr(R_s^2)

w_s is Box's (1954) scale of a quadratic form, the one behind the SPE limit of Jackson &
Mudholkar (1979) and Nomikos & MacGregor (1995): w_s r^2 is approximately chi^2 with
tr(R_s)^2 / tr(R_s^2) degrees of freedom for Gaussian descriptors. The effective dof of T^2,
the mean of T^2 over the training environments of the element, is
tr(Pi_s V^T C_s V) + w_s tr((I - V V^T) C_s), the trace of the model's precision times C_s (what
:func:`mahalanobis.fit_mahalanobis` reports for the dense covariance).

The kernel distance d_min (:mod:`mlip_md.domain.kernel`) runs on the P + 1 coordinates (z, r):
|(z, r)_x - (z, r)_t| <= |x - t| (the reverse triangle inequality on the residuals), 0 on
reference environments, growing when x leaves the subspace.

Stored per model: c [D], V [D, P], mu [S, P], Pi [S, P, P], w [S] and the reference set
[S, M, P + 1]; the fit holds two [D, D] matrices at a time (the averaged covariance and its
eigenvectors), never one per element.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch

#: components P kept by default (capped at D). Measured on the shipped Cu model (D = 188; fit on
#: its 164 187 training environments, scored on the 23 447 of its test split and the 66 930 of an
#: 18-class out-of-domain benchmark: surfaces, adatoms, defects, faults, other phases, liquid,
#: clusters, dimers): P = 32 holds 88 % of the variance, ranks the environments like the dense
#: T^2 (Spearman 0.998) and detects as well (AUROC for atoms whose force error exceeds 3x the
#: in-domain RMSE 0.864, dense 0.866; for out-of-domain structures by their largest T^2 0.925,
#: dense 0.919; no test structure above the training maximum). P = 16 is close (0.994, 0.861,
#: 0.926); without the residual term P = 8 and 16 fall to 0.76 and 0.85 for structures. Per
#: atom the projection costs D P multiply-adds.
DEFAULT_COMPONENTS = 32


@dataclasses.dataclass
class MonitorSpace:
    """The fitted monitor space (float64 tensors; shapes in the module docstring). ``dof``,
    ``residual_dof`` and ``explained`` are per fitted element index s: the effective dof of
    T^2, Box's dof of its residual term, and the fraction of the element's variance the P
    components hold."""

    center: torch.Tensor  # [D]
    projection: torch.Tensor  # [D, P]
    mean: torch.Tensor  # [S, P]
    precision: torch.Tensor  # [S, P, P]
    residual_weight: torch.Tensor  # [S]
    dof: Dict[int, float]
    residual_dof: Dict[int, float]
    explained: Dict[int, float]

    @property
    def components(self) -> int:
        return int(self.projection.shape[1])

    def coordinates(self, features: torch.Tensor) -> torch.Tensor:
        """Monitor coordinates (z, r) [n, P + 1] of standardised descriptors [n, D]."""
        delta = features.to(self.center.dtype) - self.center
        z = delta @ self.projection
        residual = ((delta * delta).sum(dim=1) - (z * z).sum(dim=1)).clamp_min(0.0)
        return torch.cat([z, residual.sqrt().unsqueeze(1)], dim=1)

    def t_squared(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """T^2 [n] of standardised descriptors [n, D] of elements ``species`` [n] (0..S-1)."""
        y = self.coordinates(features)
        p = self.components
        species = torch.as_tensor(species, dtype=torch.long)
        out = torch.zeros(y.shape[0], dtype=y.dtype)
        for s in range(self.mean.shape[0]):  # one element at a time: no [n, P, P] gather
            rows = torch.nonzero(species == s).squeeze(1)
            delta = y[rows, :p] - self.mean[s]
            out[rows] = ((delta @ self.precision[s]) * delta).sum(dim=1) + self.residual_weight[s] * y[rows, p] ** 2
        return out


def _covariance(rows: torch.Tensor, mean: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Unbiased covariance [D, D] of ``rows`` [n, D], accumulated in chunks of rows."""
    d = rows.shape[1]
    cov = torch.zeros((d, d), dtype=torch.float64)
    for start in range(0, rows.shape[0], chunk):
        block = rows[start : start + chunk] - mean
        cov.addmm_(block.T, block)
    return cov / (rows.shape[0] - 1)


def _fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Columns of ``basis`` with their largest-magnitude entry positive (deterministic)."""
    if basis.shape[1] == 0:
        return basis
    pivot = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[pivot, torch.arange(basis.shape[1])])
    return basis * torch.where(signs == 0, torch.ones_like(signs), signs)


def _subspace(means: torch.Tensor, pooled: torch.Tensor, components: int) -> torch.Tensor:
    """V [D, P] orthonormal: the span of the rows of ``means`` [S', D] (rank r, already
    centred), then the leading eigenvectors of ``pooled`` [D, D] (overwritten) projected onto
    the orthogonal complement of that span. Holds pooled and its eigenvectors, 2 [D, D]."""
    d = pooled.shape[0]
    mean_basis = torch.zeros((d, 0), dtype=torch.float64)
    if means.shape[0] > 0:
        u, sv, _ = torch.linalg.svd(means.T, full_matrices=False)
        if float(sv.max()) > 0:
            mean_basis = u[:, : int((sv > 1e-10 * float(sv.max())).sum())]
    r = mean_basis.shape[1]
    p = min(d, max(components, r))
    if r > 0:  # (I - B B^T) C (I - B B^T): the mean directions get eigenvalue 0
        cb = pooled @ mean_basis
        pooled -= mean_basis @ cb.T + cb @ mean_basis.T - mean_basis @ (mean_basis.T @ cb) @ mean_basis.T
    values, vectors = torch.linalg.eigh(0.5 * (pooled + pooled.T))
    del pooled
    leading = vectors[:, torch.arange(d - 1, d - 1 - (p - r), -1)]
    # orthonormal, the mean directions first (QR keeps the span of the leading columns)
    basis, _ = torch.linalg.qr(torch.cat([mean_basis, leading - mean_basis @ (mean_basis.T @ leading)], dim=1))
    return _fix_signs(basis)


def fit_monitor_space(
    features: torch.Tensor, species: torch.Tensor, n_species: int, components: int = DEFAULT_COMPONENTS,
    shrinkage: float = 0.05,
) -> MonitorSpace:
    """Fit the monitor space to standardised descriptors ``features`` [N, D] of elements
    ``species`` [N] (0..S-1). Elements with fewer than 2 environments get no statistics (T^2 0
    for them, as before they were fitted). ValueError when no element has 2 environments,
    when the shrinkage is outside (0, 1] or ``components`` < 1."""
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    x = features.to(torch.float64)
    species = torch.as_tensor(species, dtype=torch.long)
    d = x.shape[1]
    rows = {s: torch.nonzero(species == s).squeeze(1) for s in range(n_species)}
    fitted = [s for s in range(n_species) if rows[s].numel() >= 2]
    if not fitted:
        raise ValueError("need at least 2 environments of an element to fit the domain monitors; add training data")
    means, traces, frobenius = {}, {}, {}
    pooled = torch.zeros((d, d), dtype=torch.float64)
    for s in fitted:  # one [D, D] covariance at a time
        xs = x.index_select(0, rows[s])
        means[s] = xs.mean(dim=0)
        cov = _covariance(xs, means[s])
        traces[s], frobenius[s] = float(cov.trace()), float((cov * cov).sum())
        pooled += cov / len(fitted)
        del cov
    if not any(t > 0 for t in traces.values()):
        raise ValueError("all training descriptors are identical: the covariance is degenerate; "
                         "train on more varied structures")
    center = torch.stack([means[s] for s in fitted]).mean(dim=0)
    projection = _subspace(torch.stack([means[s] - center for s in fitted]), pooled, components)
    del pooled
    p = projection.shape[1]
    mean = torch.zeros((n_species, p), dtype=torch.float64)
    precision = torch.zeros((n_species, p, p), dtype=torch.float64)
    weight = torch.zeros(n_species, dtype=torch.float64)
    dof, residual_dof, explained = {}, {}, {}
    eye = torch.eye(p, dtype=torch.float64)
    for s in fitted:
        centred = x.index_select(0, rows[s]) - means[s]
        scores = centred @ projection  # [n_s, P]
        n_s = centred.shape[0]
        inner = scores.T @ scores / (n_s - 1)  # V^T C_s V
        cross = centred.T @ scores / (n_s - 1)  # C_s V [D, P]
        tau = traces[s] / d
        regularised = (1.0 - shrinkage) * inner + shrinkage * tau * eye
        pi = torch.linalg.inv(regularised)
        pi = 0.5 * (pi + pi.T)
        # residual covariance R = (1 - a) P C P + a tau P with P = I - V V^T (rank D - P)
        t1 = max(traces[s] - float(inner.trace()), 0.0)
        t2 = max(frobenius[s] - 2.0 * float((cross * cross).sum()) + float((inner * inner).sum()), 0.0)
        outside = d - p
        r1 = (1.0 - shrinkage) * t1 + shrinkage * tau * outside
        r2 = (1.0 - shrinkage) ** 2 * t2 + 2.0 * shrinkage * (1.0 - shrinkage) * tau * t1 + (shrinkage * tau) ** 2 * outside
        w = r1 / r2 if outside > 0 and r2 > 0 else 0.0
        mean[s] = (means[s] - center) @ projection
        precision[s] = pi
        weight[s] = w
        dof[s] = float((pi * inner).sum()) + w * t1
        residual_dof[s] = r1 * r1 / r2 if w > 0 else 0.0
        explained[s] = float(inner.trace()) / traces[s] if traces[s] > 0 else 1.0
    return MonitorSpace(center, projection, mean, precision, weight, dof, residual_dof, explained)
