"""TDM (Luo et al. 2025, "Learning Few-Step Diffusion Models by Trajectory Distribution Matching"): data-free.

A K-step student (default 4) is matched step by step. Sampling-steps-aware decoupling: the output x̂_0^k of step k
is only ever seen by the sampler at the next level σ_{k+1}, so step k is matched to the data only on its own
interval of noise levels, σ_{k+1} <= s < σ_k (the last step down to a small floor). The intervals of different
steps are disjoint, so one critic (fake score) at level s models exactly one step's outputs.

As in the authors' code the student moves between its steps DDIM-like, along its own predicted noise
ε̂ = (x_k - x̂_0^k) / σ_k: x_{k+1} = x̂_0^k + σ_{k+1} ε̂ (`move=ddim`; samplers.few_step_sample, and exported with a
deterministic scheduler). A trajectory sample at s is that point diffused on with fresh noise z,
x_s = x_{k+1} + sqrt(s² - σ²_{k+1}) z, whose noise m = (x_s - x̂_0^k) / s is not quite Gaussian; the critic's loss is
weighted per sample by the authors' importance weight exp(-mean(m²)/2) / exp(-mean(z²)/2). `move=renoise` re-noises
with fresh noise instead, as the other methods' students (x_s = x̂_0^k + s z, weight 1).

The authors' code draws t ~ U[max(20, t_{k+1}), t_k - 10] in SD's 1000 timesteps. Here the timestep space is the
teacher's own grid of levels (its timesteps; for distmatch's own teachers the 1000-point Karras grid DMD2's ranges
index): s is uniform by grid index in [max(floor, i(σ_{k+1})), i(σ_k) - margin], with floor = 2 % of the grid
(index 20 of 1000, σ ≈ 0.003 on the Karras grid) as DMD2's dm_range lower end.

Per iteration: one no-grad roll-out of the batch, each row only as far as the steps drawn for it need; the critic
learns, with the min(SNR, 5)-weighted x̂_0 loss, each sample's detached output of one step (steps spread evenly
over the batch) at a level in that step's interval; then the student runs one step per sample (drawn again) with
gradients and is regressed onto x̂_0 + (x̂_real - x̂_fake) (+ the CFG term via the guided real score) with a
pseudo-Huber distance per element (the authors' code; `huber=sample` takes one distance per sample) divided by
mean |x̂_0 - x̂_real| (on images per sample, the paper's d(x, y) = sqrt(||x - y||² + c²) - c: per element, the
last step lost the digits, RESULTS.md). As in the authors' code the critic learns at five times the student's
rate, AdamW decays both by 1e-2 and only the student's gradient is clipped (at 1).

The pseudo-Huber constant c sets what kind of push that is. With the authors' c = 1e-3 (the default) each element's
distance is |x̂_fake - x̂_real| wherever its gap exceeds c, so each element gets a push of unit size (its sign) over
mean |x̂_0 - x̂_real| however small its real-fake gap; c = 1 per sample (recipe tdm+ode) makes it quadratic below one
data unit, DMD's push.

The authors' optional random landing point (`--use_randmid`, off in their published command) is not offered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..parameterization import append_dims
from ..samplers import MOVES, move_to
from ..schedules import karras_grid_1000
from ..training.method import Batch
from .common import StudentCriticMethod
from .student import StudentConfig, full, noised, refuse_student_options
from .losses import critic_loss, pseudo_huber
from .pairs import IMAGE_PAIRS, OdePairs, check_ode_init, regression_loss

_TRAIN = {"betas": [0.0, 0.95], "grad_clip": 1.0, "weight_decay": 1e-2}  # the authors' AdamW and clipping
# TDM's own few-step levels and rate on every kind of data (one critic: its intervals already separate the steps).
# A flow teacher's stock K levels end at its lowest training level, an interval too short for TDM's last step: its
# levels end at s = shift(0.25), where DMD2's 4-step students start their last step (t = 249 of 1000).
# Images take the pseudo-Huber distance per sample (see the module's docstring); tdm.huber=element runs the code's.
DEFAULTS = {"vector": {"train": {**_TRAIN, "lr": 1e-4},
                       "student": {"steps": 4, "sigma_top": 7.0, "sigma_last": 0.35, "flow_terminal": 0.25}},
            "image": {"train": _TRAIN, "student": {"steps": 4, "flow_terminal": 0.25},
                      "tdm": {"huber": "sample", "ode_pairs": IMAGE_PAIRS}}}


@dataclass
class Options:
    critic_ratio: int = 1              # critic updates per student update (TDM: 1:1)
    guidance: float = 1.0              # classifier-free guidance on the real (teacher) score; 1 = none
    lr_critic: float = 0.0             # 0 = critic_rate x train.lr
    critic_rate: float = 5.0           # the critic's learning rate as a multiple of the student's (the authors': 5)
    clip_critic: bool = False          # clip the critic's gradient too (the authors clip the student's only)
    huber_c: float = 1e-3              # pseudo-Huber constant of the student's loss (the authors'; recipe
                                       # tdm+ode: 1)
    huber: str = "element"             # pseudo-Huber per element (the authors' code) or per sample (recipe tdm+ode)
    floor: float = 0.02                # lowest level of the last step's interval, as a fraction of the Karras grid
    margin: int = 10                   # Karras-grid indices kept free just below each step's own level σ_k
    ode_weight: float = 0.0            # beside TDM's loss, regress every step on the teacher's ODE trajectory
                                       # (step k from the ODE's state at σ_k to its end, pairs.py; recipe
                                       # tdm+ode: 1); 0 = off
    ode_pairs: int = 16384             # pairs for ode_weight, made once and cached in the run folder
    move: str = "ddim"                 # between steps the student moves along its own predicted noise (TDM's
                                       # DDIM-like trajectory, sampled and exported so); renoise: fresh noise, as
                                       # the other methods' students (recipe tdm+ode)

    def validate(self):
        if self.critic_ratio < 1:
            raise UserError(f"tdm.critic_ratio must be >= 1, got {self.critic_ratio}")
        if not 0 <= self.floor < 1 or self.margin < 0:
            raise UserError("tdm.floor must be a fraction in [0, 1) and tdm.margin >= 0")
        if self.guidance < 0 or self.lr_critic < 0 or self.huber_c <= 0 or self.critic_rate <= 0:
            raise UserError("tdm.guidance and tdm.lr_critic must be >= 0, tdm.huber_c and tdm.critic_rate > 0")
        if self.huber not in ("element", "sample"):
            raise UserError(f"tdm.huber must be element or sample, got {self.huber!r}")
        if self.move not in MOVES:
            raise UserError(f"tdm.move must be one of {', '.join(MOVES)}, got {self.move!r}")
        check_ode_init("tdm", None, self.ode_pairs, self.ode_weight)


def step_intervals(sigmas: list[float], floor: float = 0.02, margin: int = 10,
                   grid: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Each step's own interval [lo_k, hi_k] of indices on the teacher's ascending grid of levels (default DMD2's
    1000-point Karras grid; TDM's t ~ U[max(20, t_{k+1}), t_k - 10]): every level s in it has σ_{k+1} <= s < σ_k,
    so the intervals are disjoint."""
    grid = karras_grid_1000() if grid is None else grid.double()
    floor_index = int(round(floor * len(grid)))

    def first_at_or_above(sigma: float) -> int:
        return int(torch.searchsorted(grid, torch.tensor(sigma, dtype=grid.dtype)))

    out = []
    for k, sigma in enumerate(sigmas):
        below = sigmas[k + 1] if k + 1 < len(sigmas) else 0.0
        lo = max(floor_index, first_at_or_above(below))  # grid[lo] >= σ_{k+1}
        hi = min(first_at_or_above(sigma), len(grid)) - 1 - margin  # grid[hi] < σ_k
        if hi < lo:
            what = f"student levels {sigma:.4g} and {below:.4g} are" if below else f"the last level {sigma:.4g} is"
            raise UserError(f"{what} too close for TDM's per-step intervals (tdm.margin={margin}, tdm.floor={floor}); "
                            "spread the student's levels (student.sigmas / student.timesteps) or lower tdm.margin / "
                            "tdm.floor")
        out.append((lo, hi))
    return out


def tdm_generator_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, c: float = 1e-3,
                       eps: float = 1e-6, per: str = "element") -> torch.Tensor:
    """TDM's student loss: pseudo-Huber(x̂_0, sg(x̂_0 + x̂_real - x̂_fake)) / mean|x̂_0 - x̂_real| per sample
    (x̂_real already carries the CFG term (s-1)(x̂_real - x̂_uncond) when guided)."""
    real, fake = x0_real.float(), x0_fake.float()
    target = (x0.detach().float() + (real - fake)).detach()
    w = (x0.detach().float() - real).abs().flatten(1).mean(1)
    return torch.nan_to_num(pseudo_huber(x0, target, c, per) / (w + eps)).mean()


class TDM(OdePairs, StudentCriticMethod):
    name = "tdm"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        return False

    def __init__(self, ctx, teacher, cfg, sigmas: list[float]):
        refuse_student_options(cfg, "tdm", backsim=False)
        self.opts, self.sigmas, self.teacher = cfg.tdm, list(sigmas), teacher
        self.intervals = step_intervals(self.sigmas, self.opts.floor, self.opts.margin, teacher.schedule.grid)
        # its own step scheme (the defaults: spread draws, one critic), but the generator's feature cap applies, as
        # the student is saved with it
        lr_critic = self.opts.lr_critic or self.opts.critic_rate * ctx.train.lr
        self.setup(ctx, teacher, sigmas, self.opts.guidance, gan=False, lr_critic=lr_critic,
                   student=StudentConfig(fourier_cap=cfg.student.fourier_cap,
                                         levels_sigma_max=cfg.student.levels_sigma_max))
        self.shape = teacher.shape

    def step_levels(self, k: torch.Tensor) -> torch.Tensor:
        """A level s per sample, uniform by grid index within the interval of its step k."""
        bounds = torch.tensor(self.intervals, device=k.device)[k]
        lo, hi = bounds[:, 0], bounds[:, 1]
        idx = lo + (torch.rand(len(k), device=k.device) * (hi - lo + 1)).long().clamp(max=hi - lo)
        return self.grid.to(k.device)[idx]

    @torch.no_grad()
    def rollout(self, n: int, cond, last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's K-step chain: every step's input x_k (K, n, ...) and output x̂_0^k (K, n, ...). With
        `last` (n,), row i stops after step last[i]: its later inputs are then those of a chain that stopped there
        and its later outputs zero, neither to be read."""
        x = torch.randn((n,) + self.shape, device=self.ctx.device) * self.student.input_scale
        inputs, outputs = [], []
        with self.ctx.autocast():
            for k, sigma in enumerate(self.sigmas):
                live = None if last is None else (last >= k).nonzero().squeeze(1)
                if live is None or len(live) == n:
                    x0 = self.gen(x, full(x, sigma), cond).float()
                else:
                    x0 = torch.zeros_like(x, dtype=torch.float32)
                    if len(live):
                        x0[live] = self.gen(x[live], full(x[live], sigma), cond[live] if cond is not None else None
                                            ).float()
                inputs.append(x)
                outputs.append(x0)
                if k + 1 < len(self.sigmas):
                    x = move_to(x0, self.sigmas[k + 1], x, sigma, self.opts.move)
        return torch.stack(inputs), torch.stack(outputs)

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        n, cond = self.batch_and_labels(batch)
        rows = torch.arange(n, device=self.ctx.device)
        k = rows % len(self.sigmas)  # every step equally represented in each batch
        # the generator's rows draw their steps independently of the critic's (as the authors' code does), and
        # each row of the roll-out runs only as far as either needs: 2.75 of 4 passes for 4 steps, not 4
        k_gen = k[torch.randperm(n, device=self.ctx.device)] if it % self.opts.critic_ratio == 0 else None
        inputs, outputs = self.rollout(n, cond, k if k_gen is None else torch.maximum(k, k_gen - 1))
        logs = self.critic_step(inputs[k, rows], outputs[k, rows], k, cond)
        if k_gen is not None:
            logs.update(self.generator_step(inputs[k_gen, rows], k_gen, cond))
        return logs

    def diffused(self, x_in: torch.Tensor, x0: torch.Tensor, k: torch.Tensor, s: torch.Tensor):
        """Step k's output x̂_0 (from input x_in) where the sampler takes it, at the next level σ_{k+1} (0 after the
        last step), diffused on to s >= σ_{k+1} with fresh noise z: x_s = x̂_0 + σ_{k+1} ε̂ + sqrt(s² - σ²_{k+1}) z.
        Returns x_s and TDM's importance weight exp(-mean(m²)/2) / exp(-mean(z²)/2) of the noise m = (x_s - x̂_0)/s
        it holds (re-noised students: x_s = x̂_0 + s z, weight 1)."""
        if self.opts.move != "ddim":
            return noised(x0, s), None
        levels = torch.tensor(self.sigmas + [0.0], device=k.device, dtype=torch.float64)
        sigma_k, sigma_next = levels[k], levels[k + 1]
        beta = (s.double() ** 2 - sigma_next ** 2).clamp(min=0).sqrt()
        x_mid = move_to(x0, sigma_next.float(), x_in, sigma_k.float(), "ddim")
        z = torch.randn_like(x0)
        x_s = x_mid + append_dims(beta.float(), z.ndim) * z
        m = (x_s - x0) / append_dims(s.float(), z.ndim)
        weight = torch.exp(-0.5 * (m.float() ** 2).flatten(1).mean(1) + 0.5 * (z.float() ** 2).flatten(1).mean(1))
        return x_s, weight

    def critic_step(self, x_in: torch.Tensor, x0: torch.Tensor, k: torch.Tensor, cond) -> dict[str, float]:
        """The fake score learns each step's (detached) outputs at levels inside that step's own interval, from
        where the student's trajectory puts them, importance-weighted."""
        s = self.step_levels(k)
        x_s, weight = self.diffused(x_in, x0, k, s)
        with self.ctx.autocast():
            pred, _ = self.critic(x_s, s, cond)
            loss = critic_loss(pred, x0, s, self.sigma_data, weighting="snr", weight=weight)
        self.update_critic(loss, clip=self.opts.clip_critic)  # the authors clip the student only
        return {"loss_critic": loss.item()}

    def generator_step(self, x_in: torch.Tensor, k: torch.Tensor, cond) -> dict[str, float]:
        sigma_in = torch.tensor(self.sigmas, device=k.device)[k]
        critic = self.frozen_critic()
        o, n = self.opts, len(x_in)
        if o.ode_weight > 0:  # one generator pass over TDM's inputs and the regression's (DDP: one forward)
            self.load_pairs(self.teacher, o.ode_pairs, o.guidance)
            r_in, r_sigma, y, c = self.regression_batch(n)
            x_in, sigma_in = torch.cat([x_in, r_in]), torch.cat([sigma_in, r_sigma])
            cond = torch.cat([cond, c]) if cond is not None else None
        with self.ctx.autocast():
            out = self.gen(x_in, sigma_in, cond).float()
        x0, cond = out[:n], cond[:n] if cond is not None else None
        s = self.step_levels(k)
        with torch.no_grad(), self.ctx.autocast():
            x_s, _ = self.diffused(x_in[:n], x0.detach(), k, s)
            x0_fake, _ = critic(x_s, s, cond)
            x0_real = self.real(x_s, s, cond)
        loss = tdm_generator_loss(x0, x0_real, x0_fake, self.opts.huber_c, per=self.opts.huber)
        logs = {"loss_tdm": loss.item(), "real_fake_gap": (x0_real - x0_fake.float()).abs().mean().item()}
        if o.ode_weight > 0:
            loss_reg = regression_loss(out[n:], y)
            loss = loss + o.ode_weight * loss_reg
            logs["loss_reg"] = loss_reg.item()
        self.update_generator(loss, critic)
        return logs

Method = TDM
