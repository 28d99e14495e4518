"""The client population: a traffic-weighted Gaussian mixture over per-client vectors.

Each fitted client is a vector (its learned embedding, its log-gap normalizer
and its log mean rate). After training a scikit-learn ``GaussianMixture`` is
fitted to these vectors with each client weighted by its traffic, so
``clients=new:N`` draws unseen clients that look like the traffic (the learned
analogue of ServeGen's client pool). ``GaussianMixture`` takes no sample
weights, so the weighting resamples clients in proportion to their traffic.
The fitted parameters are plain arrays (JSON); drawing needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Resampled points the mixture is fitted to (traffic weighting); enough for a stable fit.
RESAMPLED_POINTS = 4096
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
        """(D,) the population's traffic-weighted mean vector."""
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


def fit_population(
    vectors: np.ndarray, traffic: np.ndarray, n_components: int, seed: int
) -> ClientPopulation:
    """Traffic-weighted Gaussian mixture over client vectors (C, D); traffic (C,) events per client."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    weights = np.asarray(traffic, dtype=np.float64) + 1e-9
    points = vectors[rng.choice(len(vectors), size=RESAMPLED_POINTS, p=weights / weights.sum())]
    center, scale = points.mean(0), points.std(0) + 1e-6
    k = int(max(1, min(n_components, len(np.unique(points, axis=0)))))
    gm = GaussianMixture(k, covariance_type="full", reg_covar=REG_COVAR, random_state=seed)
    gm.fit((points - center) / scale)
    return ClientPopulation(
        weights=gm.weights_,
        means=gm.means_ * scale + center,
        covariances=gm.covariances_ * np.outer(scale, scale)[None],
    )
