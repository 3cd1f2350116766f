"""Image metrics on the features of an in-domain network (see features.py): FD, KID, PRDC, classes, diversity.

Images are torch tensors (N, C, H, W) in [-1, 1].  Features are extracted once and every metric is computed from
them.  The Fréchet distance here is NOT Inception FID: it is reported as `fd` next to `feature_net` and `fd_name`
(e.g. `fd_classifier`) and is only comparable between runs that used the same cached network and equal N (FD is
biased at small N; KID is not, so KID is the better headline on 1-2k samples).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import extract, get_feature_net
from .vectors import _as_2d, _subsample

PRDC_MAX = 2000


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T  # rounding can leave tiny negative eigenvalues


def frechet_distance(feat_a, feat_b) -> float:
    """|μa-μb|² + tr(Σa + Σb - 2 (Σa Σb)^½) in float64, covariances normalised by N-1.

    tr((Σa Σb)^½) is the sum of square roots of the eigenvalues of the symmetric PSD matrix Σa^½ Σb Σa^½ (same
    spectrum as Σa Σb), so no general, possibly complex, matrix square root is needed.
    """
    a, b = _as_2d(feat_a), _as_2d(feat_b)
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    root_a = _sqrtm_psd(cov_a)
    mid = root_a @ cov_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((mid + mid.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * tr_sqrt)


def kid(feat_a, feat_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float | None]:
    """Kernel Inception-style distance: unbiased MMD² with kernel (x·y/d + 1)³, mean and std over random subsets.

    Subsets are drawn without replacement within a subset, with a fixed seed; subset_size is capped at the
    smaller sample size. The std is None when every subset is both whole sets (equal sizes up to subset_size).
    """
    a, b = _as_2d(feat_a), _as_2d(feat_b)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    d = a.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        vals.append((kxx.sum() - kxx.trace()) / off + (kyy.sum() - kyy.trace()) / off - 2 * kxy.mean())
    v = torch.stack(vals)
    whole = m == a.shape[0] == b.shape[0]  # every subset is both whole sets: no spread to report
    return float(v.mean()), (None if whole or len(v) < 2 else float(v.std(unbiased=False)))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself at distance 0


def prdc(real_feats, fake_feats, k: int = 5, seed: int = 0) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020), with k-NN balls; at most 2000 points each.

    precision: share of fake points inside some real k-NN ball; recall: share of real points inside some fake
    ball; density: mean number of real balls containing a fake point, / k; coverage: share of real points whose
    ball contains at least one fake point.  Collapse shows as low recall and coverage.
    """
    real = _subsample(_as_2d(real_feats), PRDC_MAX, seed)
    fake = _subsample(_as_2d(fake_feats), PRDC_MAX, seed + 1)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} points on each side")
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(real, fake)  # (R, F)
    inside_real = d < r_real[:, None]  # fake j inside real ball i
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float((d < r_fake[None, :]).any(dim=1).double().mean()),
        "density": float(inside_real.double().sum(dim=0).mean() / k),
        "coverage": float((d.min(dim=1).values < r_real).double().mean()),
    }


def class_coverage(logits_or_preds, num_classes: int, requested=None, min_share: float = 0.25) -> dict:
    """Class histogram of generated samples from the feature net's classifier.

    `classes_covered`: share of classes receiving at least `min_share` of the uniform share 1/num_classes.
    With the labels the samples were generated for (`requested`), `class_accuracy` is the share classified as
    the requested class.
    """
    p = torch.as_tensor(logits_or_preds).detach().cpu()
    preds = p.argmax(dim=1) if p.ndim == 2 else p.long()
    hist = torch.bincount(preds, minlength=num_classes)[:num_classes].double() / max(len(preds), 1)
    out = {
        "classes_covered": float((hist >= min_share / num_classes).double().mean()),
        "class_histogram": hist.tolist(),
    }
    if requested is not None:
        req = torch.as_tensor(requested).detach().cpu().long()
        out["class_accuracy"] = float((preds == req).double().mean())
    return out


def mean_pairwise_distance(feats, cap: int = PRDC_MAX, seed: int = 0) -> float:
    x = _subsample(_as_2d(feats), cap, seed)
    n = x.shape[0]
    d = torch.cdist(x, x)
    return float(d.sum() / (n * (n - 1)))


def feature_metrics(fake: torch.Tensor, real: torch.Tensor) -> dict:
    """FD, KID, PRDC and diversity from precomputed features."""
    kid_mean, kid_std = kid(fake, real)
    out = {"fd": frechet_distance(fake, real), "kid": kid_mean, "kid_std": kid_std}
    out.update(prdc(real, fake, k=5))
    out["diversity"] = mean_pairwise_distance(fake) / mean_pairwise_distance(real)
    return out


def image_metrics(samples, reference, ref_labels, fingerprint: str, sample_labels=None, cache_dir=None) -> dict:
    """All image metrics of `samples` against `reference` on the cached in-domain feature network.

    `ref_labels` (or None) decides the network kind: a classifier also yields `classes_covered`,
    `class_histogram` and, given `sample_labels` (the labels the samples were generated for), `class_accuracy`.
    `diversity` is the mean pairwise feature distance of the samples over that of the reference (1 = as diverse).
    """
    net = get_feature_net(reference, ref_labels, fingerprint, cache_dir=cache_dir)
    fake, fake_logits = extract(net, samples)
    real, _ = extract(net, reference)
    out = {"feature_net": net.kind, "fd_name": f"fd_{net.kind}", "n_samples": len(fake), "n_reference": len(real)}
    out.update(feature_metrics(fake, real))
    if fake_logits is not None:
        out.update(class_coverage(fake_logits, net.config["num_classes"], requested=sample_labels))
    else:
        out["classes_covered"] = None  # no labels, no classifier: say so rather than omit silently
    if "val_accuracy" in net.info:
        out["feature_net_val_accuracy"] = net.info["val_accuracy"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# The Inception front-end's resize (inception.py scores images on Inception-v3 features through torchmetrics).

INCEPTION_SIZE = 299


def tf1_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Bilinear resize as TF1's legacy resize_bilinear (align_corners=False, no half-pixel centres).

    Output pixel j samples input coordinate j·in/out.  grid_sample with align_corners=False samples
    (j + ½)·in/out - ½, so the identity grid is shifted by 1/in - 1/out in normalised units.
    """
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
