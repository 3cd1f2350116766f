"""f-distill (Xu et al. 2025, "One-step Diffusion Models with f-Divergence Distribution Matching").

DMD's distribution-matching gradient is the reverse-KL case of a general f-divergence; for any f the gradient is
the same score difference weighted per sample by h(r) = r² f''(r), r = p_teacher / q_student at (x_t, σ).
r comes from the GAN discriminator: as in the authors' code (NVlabs FastGen) a head on the frozen teacher
network's features, trained beside the critic on real data vs student samples, both noised over the whole grid,
so its optimal logit is log p_σ / q_σ; the generator's GAN term reaches it through the frozen teacher
(`features=critic`: the head on the critic's features instead, trained inside the critic's loss as dmd2's).
r = exp(logit) at the generator's own noisy sample, logit clamped to [-10, 10], r to [0.1, 20], detached, fp32.
As in the authors' code (NVlabs FastGen), r is divided by its running mean in its noise-level bin (10 bins, EMA
momentum 0.5, kept as buffers so they survive resume) and h by its batch mean, so only the relative weights inside a
batch matter. The bins are FastGen's, of equal width in the teacher's own time t (`bins_by=time`): the timestep
for a DDPM teacher, s for a flow one, σ for an EDM one, where the first bin (σ < 8) holds 64 % of DMD2's draws;
`bins_by=index` takes bins holding equal shares of the levels the DM gradient draws instead (the same bins for a
DDPM teacher; RESULTS.md has both on 8 Gaussians).
The generator's non-saturating GAN term is part of the method.
The noisy sample x_t = x + σ ε (σ in dm_range) serves the DM gradient, r and the generator's GAN loss alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..training.method import Batch
from .common import StudentCriticMethod, check_dm_range
from .student import noised
from ..networks.heads import build_head
from .losses import (F_DIVERGENCES, VECTOR_GAN_WEIGHT, density_ratio, dm_gradient, dm_loss, f_divergence_weight,
                     gan_discriminator_loss, gan_generator_loss, gan_scale)
from .pairs import IMAGE_PAIRS, OdePairs, check_ode_init

# The generator's GAN weight is FastGen's constant on images; vectors balance it against the DM gradient, as dmd2's.
DEFAULTS = {"vector": {"fdistill": dict(VECTOR_GAN_WEIGHT)},
            "image": {"fdistill": {"ode_pairs": IMAGE_PAIRS}}}


@dataclass
class Options:
    divergence: str = "js"             # rkl | kl | js | hellinger | jeffreys | neyman | softened-rkl
    critic_ratio: int = 5              # critic (+ discriminator) updates per student update
    dm_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # DM levels: fractions of the teacher's levels
                                                                         # up to the student's first level
    guidance: float = 1.0              # classifier-free guidance on the real (teacher) score; 1 = none
    lr_critic: float = 0.0             # 0 = train.lr
    gan_weight_g: float = 3e-3         # generator GAN weight (> 0: the method needs it; FastGen's ImageNet-64); with
                                       # gan_balance, the GAN push as a fraction of the weighted DM push
    gan_weight_d: float = 1e-2         # discriminator loss weight (inside the critic loss with features=critic:
                                       # keep <= 1e-2)
    features: str = "teacher"          # what the discriminator reads: the frozen teacher network's features
                                       # (FastGen) or the critic's, as dmd2's GAN head (DMD2)
    gan_balance: bool = False          # true: scale the GAN term each step so its push is gan_weight_g x the DM
                                       # gradient's (vectors, at 0.5)
    ratio_range: list[float] = field(default_factory=lambda: [0.1, 20.0])  # clamp of r = exp(logit)
    bins: int = 10                     # noise-level bins of r's running mean
    bin_momentum: float = 0.5          # EMA momentum of the per-bin means (authors: 0.5 on ImageNet-64)
    bins_by: str = "time"              # time: equal width in the teacher's own time (FastGen's; σ for an EDM
                                       # teacher, s for a flow one); index: equal shares of the DM levels' grid
    ode_init: float = 0.0              # share of the iterations spent first regressing the student on the
                                       # teacher's ODE pairs, as dmd2.ode_init (recipe fdistill+ode); 0 = off
    ode_pairs: int = 16384             # pairs for ode_init, made once and cached in the run folder
    ode_weight: float = 0.0            # after the warm-up, keep regressing the student on the pairs with this
                                       # weight beside the DM loss, as dmd2.ode_weight (recipe fdistill+ode);
                                       # 0 = off

    def validate(self):
        if self.divergence not in F_DIVERGENCES:
            raise UserError(f"fdistill.divergence must be one of {', '.join(F_DIVERGENCES)}, got {self.divergence!r}")
        if self.critic_ratio < 1:
            raise UserError(f"fdistill.critic_ratio must be >= 1, got {self.critic_ratio}")
        check_dm_range("fdistill", self.dm_range)
        if self.gan_weight_g <= 0 or self.gan_weight_d <= 0:
            raise UserError("fdistill.gan_weight_g and fdistill.gan_weight_d must be > 0: f-distill estimates the "
                            "density ratio with the GAN discriminator and trains the student with its GAN loss")
        r_lo, r_hi = self.ratio_range if len(self.ratio_range) == 2 else (None, None)
        if r_lo is None or not 0 < r_lo < r_hi:
            raise UserError(f"fdistill.ratio_range must be two numbers 0 < lo < hi, got {self.ratio_range}")
        if not 1 <= self.bins <= 1000 or not 0 <= self.bin_momentum < 1 or self.guidance < 0:
            raise UserError("fdistill.bins must be in 1..1000, fdistill.bin_momentum in [0, 1), fdistill.guidance >= 0")
        if self.lr_critic < 0:
            raise UserError(f"fdistill.lr_critic must be >= 0 (0: train.lr), got {self.lr_critic}")
        if self.bins_by not in ("index", "time"):
            raise UserError(f"fdistill.bins_by must be index or time, got {self.bins_by!r}")
        if self.features not in ("teacher", "critic"):
            raise UserError(f"fdistill.features must be teacher or critic, got {self.features!r}")
        check_ode_init("fdistill", self.ode_init, self.ode_pairs, self.ode_weight)


class RatioBins(nn.Module):
    """Running mean of the density ratio r per noise-level bin (f-distill's normalisation of r).

    The means are buffers, so the trainer's checkpoint holds them and a resumed run continues with them."""

    def __init__(self, bins: int = 10, momentum: float = 0.5, t_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.momentum, self.t_range = momentum, t_range
        self.register_buffer("mean", torch.ones(bins))

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        """The bin of each noise level, given the teacher's time t there (bins of equal width over t_range)."""
        lo, hi = self.t_range
        return ((t.double() - lo) / (hi - lo) * len(self.mean)).floor().long().clamp(0, len(self.mean) - 1)

    @torch.no_grad()
    def normalise(self, r: torch.Tensor, t: torch.Tensor, all_reduce=None) -> torch.Tensor:
        """Update each seen bin's mean with this batch's (summed over processes), then return r / mean[bin]."""
        b = self.bin_of(t)
        n = len(self.mean)
        count = torch.bincount(b, minlength=n).float()
        total = torch.bincount(b, weights=r.float(), minlength=n).float()
        if all_reduce is not None:  # every process must hold the same means
            count, total = all_reduce(count), all_reduce(total)
        seen = count > 0
        batch_mean = total[seen] / count[seen]
        self.mean[seen] = self.momentum * self.mean[seen] + (1 - self.momentum) * batch_mean
        return r / (self.mean[b] + 1e-6)


class TeacherFeatures:
    """FastGen's discriminator: a trainable head (its own optimizer, at the critic's rate) on the features of the
    frozen teacher network (the network the student starts from; for an exact mixture teacher, its trained one)."""

    def __init__(self, ctx, teacher, lr_critic: float):
        self.net = teacher.init_net.to(ctx.device).eval().requires_grad_(False)
        source = getattr(self.net, "backbone", self.net)
        if not getattr(source, "feature_dim", 0):
            raise UserError("fdistill's discriminator reads the teacher's features, and this teacher's network names "
                            "none: wrap it with wrap_teacher(..., features='<bottleneck sub-module>')")
        self.head = ctx.prepare(build_head(source).to(ctx.device))
        self.opt = ctx.make_optimizer(self.head.parameters(), lr=lr_critic or None)

    def features(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        return self.net(x, sigma, cond, return_features=True)[1].float()


def teacher_time(index: torch.Tensor, sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """The teacher's own time at levels given by grid index and σ: σ for a σ-space (EDM) teacher, the timestep for
    a DDPM one (its grid holds one level per timestep), s = σ / (1 + σ) for a flow one."""
    if kind == "vp":
        return index.double()
    return sigma.double() / (1 + sigma.double()) if kind == "flow" else sigma.double()


def f_weight(r: torch.Tensor, divergence: str, all_reduce=None) -> torch.Tensor:
    """h(r) = r² f''(r), normalised by its mean over the batch (over all processes)."""
    h = f_divergence_weight(r.float(), divergence).expand_as(r).float()
    total, count = h.sum(), torch.tensor(float(h.numel()), device=h.device)
    if all_reduce is not None:
        total, count = all_reduce(total), all_reduce(count)
    return h / (total / count + 1e-6)


class FDistill(OdePairs, StudentCriticMethod):
    name = "fdistill"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        return True

    def __init__(self, ctx, teacher, cfg, sigmas: list[float]):
        self.opts = opts = cfg.fdistill
        self.teacher = teacher
        on_teacher = opts.features == "teacher"
        self.setup(ctx, teacher, sigmas, opts.guidance, gan=not on_teacher, lr_critic=opts.lr_critic,
                   student=cfg.student)
        self.disc = TeacherFeatures(ctx, teacher, opts.lr_critic) if on_teacher else None
        n, kind = len(self.grid), teacher.schedule.kind
        if opts.bins_by == "time":  # FastGen's: equal width over the teacher's own time
            self.bin_time = lambda idx, sigma: teacher_time(idx, sigma, kind)
            t_range = tuple(self.bin_time(torch.tensor([0, n - 1]), self.grid[[0, -1]]).tolist())
        else:  # equal shares of the levels the DM gradient draws: bins of grid indices
            self.bin_time, t_range = (lambda idx, sigma: idx.double()), (0.0, float(n))
        self.ratio_bins = RatioBins(opts.bins, opts.bin_momentum, t_range).to(ctx.device)

    def modules(self):
        return {**super().modules(), "ratio_bins": self.ratio_bins,
                **({"disc": self.disc.head} if self.disc is not None else {})}

    def optimizers(self):
        return {**super().optimizers(), **({"disc": self.disc.opt} if self.disc is not None else {})}

    def fit_discriminator(self, fake: torch.Tensor, real_x: torch.Tensor, cond) -> dict[str, float]:
        """The head on the teacher's features: noisy real data (label 1) vs noisy student samples, each at its own
        levels over the whole grid (called by fit_critic after the critic's update)."""
        if self.disc is None:
            return {}
        n = len(fake)
        (_, sigma), (_, sigma_r) = self.levels(n), self.levels(n)
        both = torch.cat([noised(fake, sigma), noised(real_x, sigma_r)])
        with self.ctx.autocast():
            with torch.no_grad():
                feats = self.disc.features(both, torch.cat([sigma, sigma_r]),
                                           torch.cat([cond, cond]) if cond is not None else None)
            logits = self.disc.head(feats)
            loss_d = gan_discriminator_loss(logits[:n], logits[n:])
        self.optimizer_step(self.disc.head, self.disc.opt, self.opts.gan_weight_d * loss_d)
        return {"loss_gan_d": loss_d.item()}

    def scores(self, critic, x_t: torch.Tensor, sigma: torch.Tensor, cond, steps):
        """x̂_fake, x̂_real and the discriminator's logits at the student's noisy samples x_t; the logits keep the
        graph to the samples (through the frozen teacher, or the frozen critic)."""
        if self.disc is None:
            x0_fake, logits = critic(x_t, sigma, cond, steps)
            with torch.no_grad():
                return x0_fake.detach(), self.real(x_t.detach(), sigma, cond), logits
        with torch.no_grad():
            x0_fake, _ = critic(x_t.detach(), sigma, cond, steps)
        x0_teacher, feats = self.disc.net(x_t, sigma, cond, return_features=True)
        logits = self.freeze(self.disc.head)(feats.float())
        same = self.disc.net is self.teacher.denoiser and (cond is None or self.real.guidance == 1)
        real = x0_teacher.detach().float() if same else self.real(x_t.detach(), sigma, cond)
        return x0_fake, real, logits

    def all_reduce(self):
        acc = self.ctx.accelerator
        return (lambda t: acc.reduce(t, reduction="sum")) if acc.num_processes > 1 else None

    def generator_step(self, batch: Batch) -> dict[str, float]:
        n, cond, steps, critic = self.student_turn(batch)
        o = self.opts
        x, loss_reg = self.sample_and_regress(n, cond, steps, self.teacher, o.ode_weight, o.ode_pairs, o.guidance)
        with self.ctx.autocast():
            idx, sigma = self.levels(n, *self.opts.dm_range)
            x_t = noised(x, sigma)  # keeps x's graph for the GAN term
            x0_fake, x0_real, logits = self.scores(critic, x_t, sigma, cond, steps)
        g = dm_gradient(x.detach(), x0_real, x0_fake)
        r = self.ratio_bins.normalise(density_ratio(logits, 10.0, *self.opts.ratio_range),
                                      self.bin_time(idx, sigma), self.all_reduce())
        h = f_weight(r, self.opts.divergence, self.all_reduce())
        loss_dm = dm_loss(x, g, weight=h)
        loss_g = gan_generator_loss(logits)
        w = gan_scale(loss_dm, loss_g, x, self.opts.gan_weight_g, self.opts.gan_balance)
        loss = loss_dm + w * loss_g
        logs = {"loss_dm": loss_dm.item(), "loss_gan_g": loss_g.item(), "gan_scale": float(w),
                "dm_grad": g.abs().mean().item(), "h_min": h.min().item(), "h_max": h.max().item()}
        if loss_reg is not None:
            loss = loss + o.ode_weight * loss_reg
            logs["loss_reg"] = loss_reg.item()
        self.update_generator(loss, critic)
        if self.disc is not None:  # the head trainable again, without the GAN term's gradients
            self.disc.opt.zero_grad(set_to_none=True)
            self.ctx.unwrap(self.disc.head).requires_grad_(True)
        return logs


Method = FDistill
