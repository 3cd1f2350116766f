"""DMD (Yin et al. 2023, arXiv 2311.18828): distribution matching plus a regression on the teacher's ODE pairs.

The student gets the distribution-matching gradient exactly as in dmd2 (critic = fake score trained on detached
student samples, no GAN), with one critic update per student update as in the paper's Algorithm 1 (the five of
dmd2 came with DMD2, which dropped the regression), plus a regression loss that ties it to
the teacher's deterministic noise→sample map: `pairs` fixed noises z and the teacher's ODE samples y = ODE(σ_0 z)
(its own solver and step count; guided like the real score), made once when training starts, cached in the run
folder (`dmd_pairs.safetensors`, atomic) and reused when the run resumes. The regression anchors the one-step map
to the teacher's, which keeps the DM gradient's mode-seeking from dropping modes (the paper's reason for it).

K-step students: step 0 is regressed as G(σ_0 z, σ_0) vs y, with σ_0 the student's first level (the pairs are
solved from that same σ_0 z), and step k as G(x_k, σ_k) vs y, with x_k the ODE's state at σ_k on the way from σ_0 z
to y (pairs.py); every step also learns from the DM gradient by backward simulation.
Distance: mean squared error (`regression=mse`). The paper uses LPIPS for images, which needs pretrained weights
that cannot be fetched here, so `regression=lpips` is refused rather than silently replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..training.method import Batch
from .common import StudentCriticMethod, check_dm_range
from .losses import dm_loss
from .pairs import IMAGE_PAIRS, OdePairs, check_ode_init

# Vectors average four noise draws per sample in the DM gradient (the same expected gradient, less variance) and
# use more pairs, as a 2-D teacher's ODE is cheap to solve.
DEFAULTS = {"vector": {"dmd": {"dm_draws": 4, "pairs": 16384}},
            "image": {"dmd": {"pairs": IMAGE_PAIRS}}}


@dataclass
class Options:
    critic_ratio: int = 1              # critic updates per student update (DMD: 1; dmd2's two time-scale rule: 5)
    dm_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # DM levels: fractions of the teacher's levels
                                                                         # up to the student's first level
    guidance: float = 1.0              # classifier-free guidance on the real score and the pairs' teacher; 1 = none
    lr_critic: float = 0.0             # 0 = train.lr
    pairs: int = 4096                  # teacher noise->sample pairs, made once and cached in the run folder
    regression: str = "mse"            # distance of the regression loss: mse (lpips needs weights not available here)
    regression_weight: float = 1.0     # λ_reg (the paper's 0.25 is for LPIPS); see regression_loss for the choice
    dm_draws: int = 1                  # noise draws per student sample for the DM gradient, averaged (vectors: 4)
    ode_init: float = 0.0              # share of the iterations at the start spent on the regression alone
                                       # (recipe dmd+warmup); 0 = off

    def validate(self):
        if self.critic_ratio < 1:
            raise UserError(f"dmd.critic_ratio must be >= 1, got {self.critic_ratio}")
        check_dm_range("dmd", self.dm_range)
        if self.guidance < 0 or self.regression_weight < 0 or self.lr_critic < 0:
            raise UserError("dmd.guidance, dmd.regression_weight and dmd.lr_critic must be >= 0")
        if self.pairs < 1:
            raise UserError(f"dmd.pairs must be >= 1, got {self.pairs}")
        if self.dm_draws < 1:
            raise UserError(f"dmd.dm_draws must be >= 1, got {self.dm_draws}")
        check_ode_init("dmd", self.ode_init, self.pairs, count_key="pairs")
        if self.regression == "lpips":
            raise UserError("dmd.regression=lpips needs pretrained LPIPS network weights and none exist locally "
                            "(distmatch downloads nothing); use dmd.regression=mse")
        if self.regression != "mse":
            raise UserError(f"dmd.regression must be mse or lpips, got {self.regression!r}")


class DMD(OdePairs, StudentCriticMethod):
    name = "dmd"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        return False

    def __init__(self, ctx, teacher, cfg, sigmas: list[float]):
        self.opts, self.teacher = cfg.dmd, teacher
        self.setup(ctx, teacher, sigmas, self.opts.guidance, gan=False, lr_critic=self.opts.lr_critic,
                   student=cfg.student)
        self.pairs: dict[str, torch.Tensor] | None = None  # made or loaded at the first step, after any resume

    # --- training --------------------------------------------------------------------------------------------

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        self.load_pairs(self.teacher, self.opts.pairs, self.opts.guidance)  # the regression needs them from the start
        return super().step(batch, it)

    def generator_step(self, batch: Batch) -> dict[str, float]:
        n, cond, steps, critic = self.student_turn(batch)
        w = self.opts.regression_weight
        x, loss_reg = self.sample_and_regress(n, cond, steps, self.teacher, w, self.opts.pairs, self.opts.guidance)
        _, sigma = self.levels(n * self.opts.dm_draws, *self.opts.dm_range)
        g = self.dm_grad(critic, x, sigma, cond, steps)
        loss = loss_dm = dm_loss(x, g)
        logs = {"loss_dm": loss_dm.item(), "dm_grad": g.abs().mean().item()}
        if loss_reg is not None:
            loss = loss + w * loss_reg
            logs["loss_reg"] = loss_reg.item()
        self.update_generator(loss, critic)
        return logs


Method = DMD
