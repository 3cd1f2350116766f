"""DMD2 (Yin et al. 2024, arXiv 2405.14867): distribution matching without regression.

Each iteration updates the critic (fake score, + GAN discriminator head) on detached student samples; every
`critic_ratio`-th iteration also updates the student with the distribution-matching gradient (+ the generator's
GAN loss). K-step students are trained by backward simulation on fixed noise levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..training.method import Batch
from .common import StudentCriticMethod, check_dm_range
from .student import noised
from .losses import VECTOR_GAN_WEIGHT, dm_loss, gan_generator_loss, gan_scale
from .pairs import IMAGE_PAIRS, OdePairs, check_ode_init


# DMD2 as published on every kind of data: DM gradient, two time-scale critic, GAN on real data, no regression.
# Vectors average four noise draws per sample in the DM gradient: the same expected gradient with less variance.
# Image students keep the image defaults' EMA (0.99), though DMD2's code keeps none: at 50x DMD2's rate a 1-step
# student's last weights jump (FD 1.9-5.1 on a digits DDPM) and the average lands near its teacher (RESULTS.md).
# The generator's GAN weight is DMD2's code constant on images; vectors, where DMD2 has no constant, balance it
# against the DM gradient (on images the balance made it 50-1800x the constant, behind a discriminator at chance).
DEFAULTS = {"vector": {"dmd2": {"dm_draws": 4, **VECTOR_GAN_WEIGHT}},
            "image": {"dmd2": {"ode_pairs": IMAGE_PAIRS}}}


@dataclass
class Options:
    critic_ratio: int = 5              # critic updates per student update (two time-scale rule)
    dm_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # DM levels: fractions of the teacher's levels
                                                                         # up to the student's first level
    dm_draws: int = 1                  # noise draws per student sample for the DM gradient, averaged (vectors: 4)
    normaliser: str = "sample"         # DM gradient normaliser: per sample (DMD2) or one for the batch
    guidance: float = 1.0              # classifier-free guidance on the real (teacher) score; 1 = none
    lr_critic: float = 0.0             # 0 = train.lr
    gan: bool = True                   # GAN loss on real data vs student samples
    gan_weight_g: float = 3e-3         # generator GAN weight on the GAN loss (DMD2's ImageNet-64 code); with
                                       # gan_balance, the GAN gradient's norm on the samples as a fraction of the DM's
    gan_weight_d: float = 1e-2         # discriminator loss weight inside the critic loss (keep <= 1e-2)
    gan_balance: bool = False          # true: scale the GAN term each step so its push is gan_weight_g x the DM
                                       # gradient's (DMD2's author: make the two norms comparable; vectors, at 0.5)
    ode_init: float = 0.0              # share of the iterations at the start in which the student only
                                       # regresses on the teacher's ODE noise->sample pairs, as DMD2's
                                       # 1-step SDXL start (recipe dmd2+ode); 0 = off
    ode_pairs: int = 16384             # pairs for ode_init / ode_weight, made once and cached in the run folder
    ode_weight: float = 0.0            # after the warm-up, keep regressing the student on the pairs with this
                                       # weight beside the DM loss, as dmd's regression_weight (not DMD2: recipes
                                       # dmd2+ode, dmd2+low-start+ode); 0 = off

    def validate(self):
        if self.critic_ratio < 1:
            raise UserError(f"dmd2.critic_ratio must be >= 1, got {self.critic_ratio}")
        if self.dm_draws < 1:
            raise UserError(f"dmd2.dm_draws must be >= 1, got {self.dm_draws}")
        check_dm_range("dmd2", self.dm_range)
        if self.normaliser not in ("sample", "batch"):
            raise UserError(f"dmd2.normaliser must be sample or batch, got {self.normaliser!r}")
        if self.guidance < 0 or self.gan_weight_g < 0 or self.gan_weight_d < 0 or self.lr_critic < 0:
            raise UserError("dmd2.guidance, dmd2.lr_critic and the GAN weights must be >= 0")
        check_ode_init("dmd2", self.ode_init, self.ode_pairs, self.ode_weight)


def generator_gan_term(method, critic, x, cond, steps, loss_dm) -> tuple[torch.Tensor, dict[str, float]]:
    """DMD2's generator GAN term on the samples x, through the frozen critic's head at a fresh noise level, weighted
    by the method's gan_weight_g (balanced against the DM loss's gradient, or fixed); and for the log the GAN loss
    and the weight it was multiplied by (balanced: what DMD2's fixed gan_weight_g would have to be)."""
    _, sigma_g = method.levels(len(x))
    with method.ctx.autocast():
        _, logits = critic(noised(x, sigma_g), sigma_g, cond, steps)
    loss_g = gan_generator_loss(logits)
    o = method.opts
    w = gan_scale(loss_dm, loss_g, x, o.gan_weight_g, o.gan_balance)
    return w * loss_g, {"loss_gan_g": loss_g.item(), "gan_scale": float(w)}


class DMD2(OdePairs, StudentCriticMethod):
    name = "dmd2"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        return cfg.dmd2.gan

    def __init__(self, ctx, teacher, cfg, sigmas: list[float]):
        self.opts, self.teacher = cfg.dmd2, teacher
        self.setup(ctx, teacher, sigmas, self.opts.guidance, self.opts.gan, self.opts.lr_critic, cfg.student)

    def generator_step(self, batch: Batch) -> dict[str, float]:
        n, cond, steps, critic = self.student_turn(batch)
        o = self.opts
        x, loss_reg = self.sample_and_regress(n, cond, steps, self.teacher, o.ode_weight, o.ode_pairs, o.guidance)
        _, sigma = self.levels(n * self.opts.dm_draws, *self.opts.dm_range)
        g = self.dm_grad(critic, x, sigma, cond, steps)
        loss_dm = dm_loss(x, g)
        loss, logs = loss_dm, {"loss_dm": loss_dm.item(), "dm_grad": g.abs().mean().item()}
        if self.opts.gan:
            term, gan_logs = generator_gan_term(self, critic, x, cond, steps, loss_dm)
            logs.update(gan_logs)
            loss = loss + term
        if loss_reg is not None:
            loss = loss + o.ode_weight * loss_reg
            logs["loss_reg"] = loss_reg.item()
        self.update_generator(loss, critic)
        return logs


Method = DMD2
