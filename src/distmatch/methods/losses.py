"""Pure loss functions of the distribution-matching family (no modules, no I/O). Symbols follow the papers:
x = student sample, x_t = x + σ ε, x̂_real / x̂_fake = teacher / critic denoised estimates at (x_t, σ).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..parameterization import append_dims, edm_loss_weight


def dm_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-6,
                normaliser: str = "sample") -> torch.Tensor:
    """DMD's distribution-matching gradient (Yin et al. 2023, eq. 7 with DMD2's normaliser), in fp32:
    g = (x̂_fake - x̂_real) / mean_dims |x - x̂_real|, the per-sample normaliser making its scale data-independent.
    normaliser='batch': one normaliser, the mean over the batch too, so a sample's push keeps its size (far-off
    samples are pushed harder than near ones)."""
    x, real, fake = x.float(), x0_real.float(), x0_fake.float()
    dims = tuple(range(1, x.ndim)) if normaliser == "sample" else tuple(range(x.ndim))
    w = (x - real).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake - real) / (w + eps))


def dm_loss(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. x is grad / x.numel(): 0.5 ||x - sg(x - g)||² (mean).
    `weight` (per sample) rescales each sample's gradient, e.g. f-distill's h(r)."""
    if weight is not None:
        grad = grad * append_dims(weight.float(), grad.ndim)
    target = (x.float() - grad).detach()
    return 0.5 * F.mse_loss(x.float(), target)


def critic_loss(x0_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                weighting: str = "edm", snr_cap: float = 5.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The critic (fake score) denoising loss on detached student samples.
    weighting='edm': λ(σ) = (σ²+σ_d²)/(σσ_d)² (DMD2); 'snr': min(SNR, cap) with SNR = σ_d²/σ² (TDM).
    `weight` (per sample) multiplies each sample's term, e.g. TDM's importance weights."""
    if weighting == "edm":
        w = edm_loss_weight(sigma, sigma_data)
    elif weighting == "snr":
        w = (sigma_data ** 2 / sigma ** 2).clamp(max=snr_cap) / sigma_data ** 2
    else:
        raise ValueError(f"unknown critic weighting {weighting!r}")
    if weight is not None:
        w = w * weight.float()
    return (append_dims(w, x0.ndim) * (x0_pred.float() - x0.float()) ** 2).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: softplus(-D(fake))."""
    return F.softplus(-logits_fake.float()).mean()


def gan_discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real))."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


# f-divergence weights h(r) = r² f''(r), r = p_teacher / q_student (Xu et al. 2025, table 1).
F_DIVERGENCES = {
    "rkl": lambda r: torch.ones_like(r),
    "kl": lambda r: r,
    "js": lambda r: r / (1 + r),
    "softened-rkl": lambda r: 1 / (1 + r),
    "neyman": lambda r: 1 / r,
    "hellinger": lambda r: r.sqrt(),
    "jeffreys": lambda r: 1 + r,
}


def f_divergence_weight(r: torch.Tensor, divergence: str) -> torch.Tensor:
    return F_DIVERGENCES[divergence](r)


def density_ratio(logits: torch.Tensor, clamp_logit: float = 10.0, r_min: float = 0.1, r_max: float = 20.0):
    """r = p_real / q_fake ≈ exp(D(x)) for a discriminator trained with real label 1 (clamped, detached, fp32)."""
    return logits.detach().float().clamp(-clamp_logit, clamp_logit).exp().clamp(r_min, r_max)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = 1e-3, per: str = "element") -> torch.Tensor:
    """Pseudo-Huber distance per sample: mean over elements of sqrt(d² + c²) - c (TDM's code), or with
    per="sample", sqrt(mean d² + c²) - c (one distance of the whole sample)."""
    d2 = (a.float() - b.float()) ** 2
    if per == "sample":
        return (d2.flatten(1).mean(1) + c * c).sqrt() - c
    return ((d2 + c * c).sqrt() - c).flatten(1).mean(1)


# The generator's GAN weight on vectors, where no paper published a constant: its push half the DM push. Images
# take the authors' constant (3e-3, ImageNet-64), each method's Options default.
VECTOR_GAN_WEIGHT = {"gan_balance": True, "gan_weight_g": 0.5}


def gan_scale(loss_dm, loss_g, x, weight: float, balance: bool) -> torch.Tensor | float:
    """The generator's GAN weight: fixed, or `weight` x (DM gradient norm / GAN gradient norm) on the samples,
    so the GAN term's push is a set fraction of the DM term's whatever the data's dimension."""
    if not balance:
        return weight
    g_dm = torch.autograd.grad(loss_dm, x, retain_graph=True)[0]
    g_gan = torch.autograd.grad(loss_g, x, retain_graph=True)[0]
    return (weight * g_dm.norm() / (g_gan.norm() + 1e-12)).detach()
