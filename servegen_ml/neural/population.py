"""The client population: a Gaussian mixture over per-client vectors, one point per client.

Each fitted client is a vector (its learned embedding, its log-gap normalizer
and its log mean rate). After training a scikit-learn ``GaussianMixture`` is
fitted to these vectors, every client counting once, so ``clients=new:N``
draws N clients the way a random set of N real clients looks: most small, a
few heavy (the learned analogue of the parametric pool's uniform copies,
:func:`servegen_ml.pool.sampling.new_client_sources`). Weighting clients by
traffic instead would make nearly every new client a heavy one (20 new
clients from a 93-client language trace sent ~5x the traffic of all 93).
The fitted parameters are plain arrays (JSON); drawing needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Covariance regularization in standardized units: keeps a mixture of few clients well posed.
REG_COVAR = 1e-3


@dataclass
class ClientPopulation:
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, D) client vectors."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())
        chol = np.linalg.cholesky(self.covariances)
        z = rng.standard_normal((n, self.means.shape[1]))
        return self.means[comp] + np.einsum("nij,nj->ni", chol[comp], z)

    def mean(self) -> np.ndarray:
        """(D,) the population's mean vector (the mean client)."""
        return (self.weights[:, None] * self.means).sum(0) / self.weights.sum()

    def to_json(self) -> dict:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> ClientPopulation:
        return cls(*(np.asarray(d[k], dtype=np.float64) for k in ("weights", "means", "covariances")))


def fit_population(vectors: np.ndarray, n_components: int, seed: int) -> ClientPopulation:
    """Gaussian mixture over client vectors (C, D), each client one point (standardized for the fit)."""
    from sklearn.mixture import GaussianMixture

    points = np.asarray(vectors, dtype=np.float64)
    center, scale = points.mean(0), points.std(0) + 1e-6
    if len(points) < 2:  # one client: the mixture cannot be fitted; a regularized point mass
        return ClientPopulation(np.ones(1), points[:1].copy(), (REG_COVAR * np.diag(scale**2))[None])
    k = int(max(1, min(n_components, len(np.unique(points, axis=0)))))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=REG_COVAR, random_state=seed)
    gm.fit((points - center) / scale)
    return ClientPopulation(
        weights=gm.weights_,
        means=gm.means_ * scale + center,
        covariances=gm.covariances_ * np.outer(scale, scale)[None],
    )


def nearest_clients(real: np.ndarray, drawn: np.ndarray, block: int = 1024) -> np.ndarray:
    """(N,) index of the real client vector (C, D) nearest to each drawn one (N, D), in units of the
    real vectors' spread per dimension."""
    scale = real.std(0) + 1e-6
    a, b = real / scale, drawn / scale
    a_sq = (a * a).sum(1)
    out = np.empty(len(b), dtype=np.int64)
    for lo in range(0, len(b), block):
        # |b - a|^2 = |a|^2 - 2 a.b + |b|^2; |b|^2 is the same for every candidate.
        out[lo : lo + block] = np.argmin(a_sq[None, :] - 2.0 * b[lo : lo + block] @ a.T, axis=1)
    return out
