"""Sample-quality metrics for vector data (2-D toys and low-dimensional mixtures).

Every function takes torch tensors of shape (N, D) in the model's normalised space and returns plain floats or
dicts of floats, so results can go straight into a JSON report.  Computation is in float64: the distances being
compared are often small differences of large sums.
"""
from __future__ import annotations

import torch
from scipy.stats import chi2

MAX_POINTS = 2000  # kernel metrics build N² matrices; 2000 keeps them at ~32 MB and well under a second on 2 cores
_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _as_2d(x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    return x.reshape(x.shape[0], -1)


def _subsample(x: torch.Tensor, cap: int, seed: int) -> torch.Tensor:
    """At most `cap` rows, chosen with a fixed seed so repeated evaluations of the same samples agree."""
    if x.shape[0] <= cap:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:cap]]


def _quantiles(sorted_x: torch.Tensor, m: int) -> torch.Tensor:
    """Empirical quantile function of each column of `sorted_x` (n, P) at the m mid-levels (i + 0.5) / m."""
    n = sorted_x.shape[0]
    levels = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    idx = (levels * n).floor().long().clamp_(max=n - 1)
    return sorted_x[idx]


def sliced_wasserstein(a, b, n_proj: int = 256, seed: int = 0) -> float:
    """Mean over `n_proj` random unit directions of the 1-D Wasserstein-1 distance between the projections.

    W1 in 1-D is the L1 distance between quantile functions; with unequal sizes both are read on a common grid of
    max(Na, Nb) levels (exact when the sizes are equal, where it reduces to comparing sorted projections).
    """
    a, b = _as_2d(a), _as_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)
    pb, _ = (b @ dirs).sort(dim=0)
    if pa.shape[0] != pb.shape[0]:
        m = max(pa.shape[0], pb.shape[0])
        pa, pb = _quantiles(pa, m), _quantiles(pb, m)
    return float((pa - pb).abs().mean())


def _median_distance(a: torch.Tensor, b: torch.Tensor, seed: int) -> float:
    # The median of a 1000-point pooled subsample is an ample estimate of the scale and avoids a (2N)² matrix.
    pooled = _subsample(torch.cat([a, b]), 1000, seed + 1)
    d = torch.cdist(pooled, pooled)
    iu = torch.triu_indices(len(pooled), len(pooled), offset=1)
    med = float(d[iu[0], iu[1]].median())
    return med if med > 0 else 1.0  # all points identical: any bandwidth gives MMD 0


def _offdiag_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def mmd_rbf(a, b, bandwidths=None, seed: int = 0) -> float:
    """Unbiased MMD² with the kernel Σ_h exp(-|x-y|² / (2h²)).

    Default bandwidths are the pooled median pairwise distance times (0.25, 0.5, 1, 2, 4): a single bandwidth
    is blind to differences at scales far from it.  Unbiased, so it can be slightly negative for equal laws.
    """
    a = _subsample(_as_2d(a), MAX_POINTS, seed)
    b = _subsample(_as_2d(b), MAX_POINTS, seed + 7)
    if bandwidths is None:
        med = _median_distance(a, b, seed)
        bandwidths = [f * med for f in _BANDWIDTH_FACTORS]

    def kernel(x, y):
        d2 = torch.cdist(x, y).square_()
        return sum(torch.exp(-d2 / (2.0 * h * h)) for h in bandwidths)

    return float(_offdiag_mean(kernel(a, a)) + _offdiag_mean(kernel(b, b)) - 2.0 * kernel(a, b).mean())


def energy_distance(a, b, seed: int = 0) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (within-sample terms exclude the zero diagonal)."""
    a = _subsample(_as_2d(a), MAX_POINTS, seed)
    b = _subsample(_as_2d(b), MAX_POINTS, seed + 7)
    return float(2.0 * torch.cdist(a, b).mean() - _offdiag_mean(torch.cdist(a, a)) - _offdiag_mean(torch.cdist(b, b)))


def _component_stats(x: torch.Tensor, mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared Mahalanobis distance of every sample to every component, and log w_k + log N(x; μ_k, Σ_k)."""
    means = mixture.means.detach().cpu().to(torch.float64)
    covs = mixture.covs.detach().cpu().to(torch.float64)
    chol = torch.linalg.cholesky(covs)  # (K, D, D)
    diff = (x[:, None, :] - means[None]).unsqueeze(-1)  # (N, K, D, 1)
    z = torch.linalg.solve_triangular(chol[None], diff, upper=False).squeeze(-1)
    maha = z.square().sum(-1)  # (N, K)
    logdet = 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    logw = mixture.weights.detach().cpu().to(torch.float64).log()
    return maha, logw[None] - 0.5 * (maha + logdet[None])


def mode_stats(samples, mixture, quantile: float = 0.999, min_share: float = 0.25) -> dict:
    """Which mixture components the samples populate, and how many samples fall between components.

    Each sample goes to the component of highest responsibility; it is on-mode when its squared Mahalanobis
    distance to that component is below the chi-square `quantile` for D dimensions (an exact mixture sample is
    off-mode with probability 1 - quantile).  A component is covered when it receives at least `min_share` of its
    expected count w_k N.  `mode_histogram[k]` is the share of all N samples that are on-mode at component k.
    """
    x = _as_2d(samples)
    n, d = x.shape
    if d != mixture.means.shape[1]:
        raise ValueError(f"samples have dimension {d}, the mixture {mixture.means.shape[1]}")
    maha, logp = _component_stats(x, mixture)
    comp = logp.argmax(dim=1)
    on = maha.gather(1, comp[:, None]).squeeze(1) < float(chi2.ppf(quantile, d))
    k = mixture.means.shape[0]
    counts = torch.bincount(comp[on], minlength=k).to(torch.float64)
    expected = mixture.weights.detach().cpu().to(torch.float64) * n
    return {
        "modes_covered": float((counts >= min_share * expected).to(torch.float64).mean()),
        "off_mode": float(1.0 - on.to(torch.float64).mean()),
        "mode_histogram": (counts / n).tolist(),
    }


def vector_metrics(samples, reference, mixture=None) -> dict:
    """All vector metrics of `samples` against `reference` samples; mode statistics when the mixture is known."""
    out = {
        "swd": sliced_wasserstein(samples, reference),
        "mmd": mmd_rbf(samples, reference),
        "energy": energy_distance(samples, reference),
    }
    if mixture is not None:
        stats = mode_stats(samples, mixture)
        out["modes_covered"] = stats["modes_covered"]
        out["off_mode"] = stats["off_mode"]
    return out
