"""Open-set score candidates that lost to the deployed one (bench/openset.md): measured by
bench/openset.py beside `snakeid.model.openset`'s pieces, never shipped.

1. `Energy`: −T · logsumexp(logits / T) (Liu et al., 2020). No constants.
2. `Mahalanobis`: min over classes c of (f − μ_c)ᵀ Σ⁻¹ (f − μ_c), one covariance Σ shared by all
   classes (Lee et al., 2018), shrunk towards a multiple of the identity by Ledoit-Wolf: with
   ~1,000 photos and 3,840 dimensions the sample covariance is singular.
3. `Mahalanobis` with `background`: the relative Mahalanobis distance (Ren et al., 2021): the same
   minus the distance to one Gaussian fitted to all training photos, which discounts directions
   in which every snake photo varies (pose, light) rather than the species.

The covariance is stored as "diagonal plus low rank" (`Precision`), never as a D x D matrix: the
sample covariance of N photos has rank < N, so the shrunk Σ⁻¹ is exactly a scaled identity plus
N - C rank-one terms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from snakeid.model.openset import l2_normalise, logsumexp

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Energy:
    """The free energy −T · logsumexp(logits / T): low when some class has a large logit."""

    temperature: float = 1.0

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return -self.temperature * logsumexp(logits.astype(np.float64) / self.temperature)


@dataclass(frozen=True)
class Precision:
    """Σ⁻¹ = diag(diag) + basis · diag(gain) · basisᵀ: D + D·r numbers instead of D²."""

    diag: np.ndarray  # (D,)
    basis: np.ndarray  # (D, r) orthonormal columns: the kept eigenvectors of Σ
    gain: np.ndarray  # (r,) 1/eigenvalue − the diagonal's value along that eigenvector

    def sq_distances(self, x: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """(N, M) squared Mahalanobis distances of rows `x` (N, D) to `centres` (M, D).

        Written as an ONNX graph would compute it: expanded squares, matrix products only.
        """
        x, centres = x.astype(np.float64), centres.astype(np.float64)
        d = self.diag.astype(np.float64)
        iso = (x * x) @ d[:, None] - 2 * (x * d) @ centres.T + (centres * centres) @ d  # (N, M)
        px, pc = x @ self.basis, centres @ self.basis  # (N, r), (M, r)
        g = self.gain.astype(np.float64)
        low = (px * px) @ g[:, None] - 2 * (px * g) @ pc.T + (pc * pc) @ g  # (N, M)
        return iso + low


def ledoit_wolf_shrinkage(z: np.ndarray, eigenvalues: np.ndarray) -> float:
    """Ledoit-Wolf (2004) shrinkage of the covariance of centred rows `z` (N, D) towards
    trace/D · I, as scikit-learn's `ledoit_wolf(z, assume_centered=True)`, from the sample
    covariance's non-zero `eigenvalues` (so that the D x D matrix is never formed)."""
    n, dim = z.shape
    mu = eigenvalues.sum() / dim
    frob = (eigenvalues**2).sum()  # ‖S‖²_F
    row4 = ((z * z).sum(1) ** 2).sum()  # Σ_i ‖z_i‖⁴
    beta = (row4 / n - frob) / (dim * n)
    delta = (frob - dim * mu**2) / dim
    return 0.0 if delta <= 0 else float(min(beta, delta) / delta)


def _covariance_eigen(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues (r,), largest first, and eigenvectors (D, r) of S = zᵀz / N.

    With fewer rows than dimensions, from the N x N Gram matrix z zᵀ (same non-zero spectrum;
    eigenvectors zᵀu / sqrt(N·λ)): a fraction of the cost of an SVD, and no D x D matrix.
    """
    n, dim = z.shape
    small = z @ z.T if n < dim else z.T @ z
    eig, u = np.linalg.eigh(small / n)
    eig, u = eig[::-1], u[:, ::-1]
    keep = eig > eig[0] * 1e-10  # centring removes one direction per mean
    eig, u = eig[keep], u[:, keep]
    vecs = z.T @ u / np.sqrt(n * eig) if n < dim else u
    return eig, vecs


def fit_precision(
    z: np.ndarray, *, shrinkage: float | None = None, rank: int | None = None
) -> Precision:
    """Shrunk inverse covariance of centred rows `z` (N, D).

    Σ = (1 − s) · S + s · trace(S)/D · I with s from Ledoit-Wolf unless `shrinkage` is given.
    `rank` keeps only the leading eigenvectors; the others share one variance, the mean of
    theirs (as probabilistic PCA), so the constants shrink to D x rank.
    """
    z = np.asarray(z, dtype=np.float64)
    n, dim = z.shape
    eig, vecs = _covariance_eigen(z)
    s = ledoit_wolf_shrinkage(z, eig) if shrinkage is None else shrinkage
    floor = s * eig.sum() / dim  # the shrinkage target's variance
    keep = len(eig) if rank is None else min(rank, len(eig))
    var = (1 - s) * eig[:keep] + floor  # (r,)
    # The discarded directions share their mean variance (those with none at all get `floor`);
    # with no direction left, the diagonal cancels out along the full basis.
    rest = dim - keep
    rest_var = ((1 - s) * eig.sum() + dim * floor - var.sum()) / rest if rest else 1.0
    if rest_var <= 0 or var.min() <= 0:
        raise ValueError("singular covariance: use a shrinkage > 0 (or None for Ledoit-Wolf)")
    _logger.debug("shrinkage %.3f, rank %d of %d", s, keep, len(eig))
    return Precision(
        diag=np.full(dim, 1 / rest_var),
        basis=vecs[:, :keep],
        gain=1 / var - 1 / rest_var,
    )


@dataclass(frozen=True)
class Mahalanobis:
    """Squared Mahalanobis distance to the nearest class mean under one shared covariance;
    minus the distance to the `background` Gaussian (relative Mahalanobis) when one is fitted."""

    means: np.ndarray  # (C, D)
    precision: Precision
    background_mean: np.ndarray | None = None  # (1, D)
    background: Precision | None = None
    l2: bool = False  # L2-normalise features first

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        relative: bool = False,
        l2: bool = False,
        shrinkage: float | None = None,
        rank: int | None = None,
    ) -> Mahalanobis:
        x = l2_normalise(features) if l2 else np.asarray(features, dtype=np.float64)
        classes, y = np.unique(labels, return_inverse=True)
        means = np.stack([x[y == i].mean(0) for i in range(len(classes))])  # (C, D)
        tied = fit_precision(x - means[y], shrinkage=shrinkage, rank=rank)
        if not relative:
            return cls(means, tied, l2=l2)
        mean = x.mean(0, keepdims=True)
        bg = fit_precision(x - mean, shrinkage=shrinkage, rank=rank)
        return cls(means, tied, mean, bg, l2=l2)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        x = l2_normalise(features) if self.l2 else features
        d = self.precision.sq_distances(x, self.means).min(1)
        if self.background is not None:
            d = d - self.background.sq_distances(x, self.background_mean)[:, 0]
        return d
