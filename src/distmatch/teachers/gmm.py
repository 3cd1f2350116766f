"""The exact denoiser of a Gaussian mixture: the teacher with no training error.

For p_0 = Σ_k w_k N(μ_k, Σ_k), the noisy marginal is p_σ = Σ_k w_k N(μ_k, Σ_k + σ² I) and
    D(x, σ) = E[x_0 | x_σ = x] = Σ_k r_k(x) (μ_k + Σ_k (Σ_k + σ² I)^{-1} (x - μ_k)),
with r_k the posterior component responsibilities.  Components may carry class labels; conditioning on a class
restricts the mixture to that class's components.  Pure torch, computed in float64.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class GaussianMixture(nn.Module):
    """A mixture in the (normalised) training space, exposed as a denoiser D(x, σ, cond)."""

    def __init__(self, weights, means, covs, labels=None, num_classes: int = 0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 1:  # one isotropic variance per component
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("labels", torch.as_tensor(labels if labels is not None else [0] * k, dtype=torch.long))
        self.num_classes = num_classes
        self.dim = d

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def affine(self, shift: torch.Tensor, scale: torch.Tensor) -> "GaussianMixture":
        """The same mixture seen through x -> (x - shift) / scale (per-dimension), e.g. the data normaliser."""
        shift = torch.as_tensor(shift, dtype=torch.float64)
        inv = 1 / torch.as_tensor(scale, dtype=torch.float64)
        means = (self.means - shift) * inv
        covs = self.covs * inv[None, :, None] * inv[None, None, :]
        return GaussianMixture(self.weights, means, covs, self.labels, self.num_classes)

    def _log_weights(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        logw = self.weights.log().expand(batch, -1)
        if cond is None or self.num_classes == 0:
            return logw
        cond = cond.to(self.labels.device)
        keep = (self.labels[None, :] == cond[:, None]) | (cond[:, None] >= self.num_classes)  # null label = all
        return logw.masked_fill(~keep, -math.inf)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, σ, cond) -> x̂_0 for x of shape (B, D) and σ of shape (B,)."""
        xd = x.to(torch.float64)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov_noisy = self.covs[None] + s2[:, None] * eye  # (B, K, D, D)
        chol = torch.linalg.cholesky(cov_noisy)
        diff = xd[:, None, :] - self.means[None]  # (B, K, D)
        sol = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)  # (Σ+σ²I)^{-1}(x-μ)
        maha = (diff * sol).sum(-1)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        logp = self._log_weights(cond, x.shape[0]) - 0.5 * (maha + logdet)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        comp_mean = self.means[None] + torch.einsum("kde,bke->bkd", self.covs, sol)
        return (resp[..., None] * comp_mean).sum(1).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p_σ(x), used by tests and mode statistics."""
        xd = x.to(torch.float64)
        cov = self.covs + sigma ** 2 * torch.eye(self.dim, dtype=torch.float64, device=x.device)
        dist = torch.distributions.MultivariateNormal(self.means, covariance_matrix=cov)
        return torch.logsumexp(dist.log_prob(xd[:, None, :]) + self.weights.log(), dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, cond: torch.Tensor | None = None):
        """Draw n exact samples (and their component indices)."""
        logw = self._log_weights(cond, n) if cond is not None else self.weights.log().expand(n, -1)
        comp = torch.multinomial(logw.exp(), 1, generator=generator).squeeze(1)
        chol = torch.linalg.cholesky(self.covs)[comp]
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + (chol @ z.unsqueeze(-1)).squeeze(-1)).float(), comp

    def config(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "covs": self.covs.tolist(),
                "labels": self.labels.tolist(), "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, cfg: dict) -> "GaussianMixture":
        return cls(cfg["weights"], cfg["means"], cfg["covs"], cfg["labels"], cfg["num_classes"])
