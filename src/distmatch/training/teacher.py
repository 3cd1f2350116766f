"""Teacher training is just another method: the EDM denoising loss (Karras et al. 2022).

    σ ~ exp(N(P_mean, P_std²)),  x_σ = x_0 + σ ε,  L = λ(σ) ||D_θ(x_σ, σ, y) - x_0||²,  λ = (σ²+σ_d²)/(σ σ_d)²
with class labels dropped to the null class with probability `label_dropout` (classifier-free guidance).
With `target="exact"` the regression target is an exact denoiser's output instead of x_0 (same minimiser, far less
variance): used to fit a network to the closed-form Gaussian-mixture teacher so students can start from it.
"""
from __future__ import annotations

import torch

from ..parameterization import append_dims, edm_loss_weight
from ..schedules import sample_lognormal_sigmas
from .ema import ema_copy, ema_update
from .method import Batch, Context, Method


def drop_labels(labels: torch.Tensor | None, num_classes: int, p: float) -> torch.Tensor | None:
    """Replace each label by the null class (index num_classes) with probability p."""
    if labels is None or num_classes == 0 or p <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def edm_denoising_loss(net, x0, sigma, cond, sigma_data: float, target=None) -> torch.Tensor:
    """EDM's weighted x̂_0 regression at noise levels sigma (per-sample, summed over dims, averaged)."""
    x = x0 + append_dims(sigma, x0.ndim) * torch.randn_like(x0)
    pred = net(x, sigma, cond)
    goal = x0 if target is None else target(x, sigma, cond)
    w = append_dims(edm_loss_weight(sigma, sigma_data), x0.ndim)
    return (w * (pred.float() - goal) ** 2).mean()


class TeacherTraining(Method):
    name = "teacher"

    def __init__(self, ctx: Context, net, sigma_data: float, p_mean: float, p_std: float, label_dropout: float,
                 exact=None):
        self.ctx = ctx
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.label_dropout = label_dropout
        self.num_classes = net.num_classes
        self.exact = exact.to(ctx.device) if exact is not None else None
        self.net = ctx.prepare(net.to(ctx.device))  # then the EMA: from the first process's random start, as all
        self.ema = ema_copy(ctx.unwrap(self.net)).to(ctx.device)
        self.opt = ctx.make_optimizer(self.net.parameters())

    def modules(self):
        return {"net": self.net, "ema": self.ema}

    def optimizers(self):
        return {"net": self.opt}

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        n = batch.x.shape[0]
        sigma = sample_lognormal_sigmas(n, self.p_mean, self.p_std, device=self.ctx.device)
        cond = drop_labels(batch.labels, self.num_classes, self.label_dropout)
        target = self.exact_target if self.exact is not None else None
        with self.ctx.autocast():
            loss = edm_denoising_loss(self.net, batch.x, sigma, cond, self.sigma_data, target)
        self.opt.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        grad_norm = self.ctx.clip(self.net)
        self.opt.step()
        ema_update(self.ema, self.ctx.unwrap(self.net), self.ctx.ema_decay(it))
        return {"loss": loss.item(), "grad_norm": grad_norm}

    @torch.no_grad()
    def exact_target(self, x, sigma, cond):
        return self.exact(x, sigma, cond).float()

    def export(self):
        return self.ema.state_dict(), {}

    def sampler(self):
        return self.ema
