"""The research open-set scores of bench/_openset_scores.py (energy, Mahalanobis, relative
Mahalanobis) on tiny random data: properties and exact cross-checks, as for the deployed score's
pieces in test_openset.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_openset import _clusters, far_points_score_higher

from snakeid.model.openset import size_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _openset_scores import Energy, Mahalanobis, fit_precision  # noqa: E402

FITS = {
    "energy": lambda x, y: Energy(),
    "mahalanobis": lambda x, y: Mahalanobis.fit(x, y),
    "mahalanobis_l2_rank8": lambda x, y: Mahalanobis.fit(x, y, l2=True, rank=8),
    "relative_mahalanobis": lambda x, y: Mahalanobis.fit(x, y, relative=True),
}


@pytest.mark.parametrize("name", sorted(FITS))
def test_far_away_points_score_higher_than_known_ones(name: str) -> None:
    far_points_score_higher(FITS[name])


def test_mahalanobis_equals_a_direct_computation() -> None:
    x, y, _ = _clusters(classes=3, per_class=10, dim=12)  # N = 30 > D: full rank
    score = Mahalanobis.fit(x, y, shrinkage=0.2)
    means = np.stack([x[y == c].mean(0) for c in range(3)]).astype(np.float64)
    z = x - means[y]
    s = z.T @ z / len(z)
    sigma = 0.8 * s + 0.2 * np.trace(s) / 12 * np.eye(12)
    p = np.linalg.inv(sigma)
    q = np.random.default_rng(3).normal(2, 2, (7, 12))
    direct = np.array([min((f - m) @ p @ (f - m) for m in means) for f in q])
    np.testing.assert_allclose(score.score(q, None), direct, rtol=1e-6)


def test_low_rank_precision_with_fewer_photos_than_dimensions() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0, 1, (10, 40)) * rng.uniform(0.1, 3, 40)
    z -= z.mean(0)
    prec = fit_precision(z, shrinkage=0.3)
    s = z.T @ z / len(z)
    direct = np.linalg.inv(0.7 * s + 0.3 * np.trace(s) / 40 * np.eye(40))
    assert prec.basis.shape == (40, 9)  # rank N - 1, never D x D
    q = rng.normal(0, 1, (5, 40))
    got = prec.sq_distances(q, np.zeros((1, 40)))[:, 0]
    np.testing.assert_allclose(got, np.einsum("nd,de,ne->n", q, direct, q), rtol=1e-6)


def test_ledoit_wolf_matches_scikit_learn() -> None:
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(5)
    z = rng.normal(0, 1, (25, 60)) @ rng.normal(0, 1, (60, 60))
    prec = fit_precision(z)  # Ledoit-Wolf shrinkage, as sklearn with assume_centered
    cov, _ = ledoit_wolf(z, assume_centered=True)
    q = rng.normal(0, 1, (4, 60))
    want = np.einsum("nd,de,ne->n", q, np.linalg.inv(cov), q)
    np.testing.assert_allclose(prec.sq_distances(q, np.zeros((1, 60)))[:, 0], want, rtol=1e-5)


def test_truncated_rank_keeps_the_leading_directions() -> None:
    x, y, _ = _clusters(dim=32)
    full, low = Mahalanobis.fit(x, y), Mahalanobis.fit(x, y, rank=4)
    assert low.precision.basis.shape == (32, 4) and size_mb(low) < size_mb(full)
    q = x[:20] + 5.0
    assert np.corrcoef(full.score(q, None), low.score(q, None))[0, 1] > 0.5


def test_energy_matches_its_definition() -> None:
    logits = np.array([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0], [300.0, -300.0, 0.0]])
    lse = np.log(np.exp(logits[:2]).sum(1))
    np.testing.assert_allclose(Energy().score(None, logits)[:2], -lse)
    assert Energy().score(None, logits)[2] == pytest.approx(-300.0)  # no overflow
