"""The few-step student: its K levels (StudentConfig), the backward simulation that trains every step
(FewStepStudent), and the student options that only some methods use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..parameterization import append_dims
from ..schedules import NoiseSchedule


@dataclass
class StudentConfig:
    steps: int = 1                        # K, the student's network evaluations per sample
    sigmas: list[float] | None = None     # the K levels it starts its steps from (default: the teacher's schedule)
    timesteps: list[int] | None = None    # or, for a DDPM-family teacher, the K training timesteps of those levels
    sigma_top: float = 7.0                # K > 1: after the top, the last K-1 of K geometric levels from this ...
    sigma_last: float = 0.35              # ... to this (σ_data 0.5; a DDPM teacher's: the timesteps an exported
                                          # scheduler runs, (i+1)·T/K - 1)
    start_sigma_max: float = 14.62        # an ε- (or score-) predicting teacher's student starts at its highest
                                          # level with σ <= this (0: its top): Stable Diffusion's top, where DMD2
                                          # was published
                                          # (a linear-β DDPM's, σ 157, multiplies ε̂'s error 157x in x̂_0)
    flow_terminal: float = 0.0            # flow teachers, K > 1: the last level s = shift(this) (0: the stock
                                          # scheduler's, its lowest training level; exported with shift_terminal)
    levels_sigma_max: float = 0.0         # the DM, critic and GAN levels stop at this σ (0: at the student's start)
    backsim: str = "spread"               # K > 1: steps spread over each batch | shared: one step per batch (DMD2)
    critic_per_step: bool = False         # K > 1: one critic (fake score) per step, not one for all (not
                                          # DMD2: recipes dmd2+ode, dmd+warmup, fdistill+ode)
    first_only: float = 0.0               # K > 1: share of the iterations that train only the first step
    fourier_cap: float = 0.0              # vectors: the step from pure noise sees Fourier features of scale <= this
                                          # only (0 = all, as the teacher)
    lora_rank: int = 0                    # > 0: the generator is trained as a LoRA of this rank (peft) on every
                                          # linear and conv layer of the teacher's network, its base frozen (DMD2's
                                          # SDXL code: --generator_lora); saved merged, a plain network

    def validate(self):
        if self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        for name in ("first_only", "flow_terminal"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"student.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.backsim not in ("spread", "shared"):
            raise UserError(f"student.backsim must be spread or shared, got {self.backsim!r}")
        for name in ("start_sigma_max", "levels_sigma_max", "fourier_cap", "lora_rank"):
            if getattr(self, name) < 0:
                raise UserError(f"student.{name} must be >= 0, got {getattr(self, name)}")
        if self.sigmas is not None and self.timesteps is not None:
            raise UserError("give the student's levels as student.sigmas or as student.timesteps, not both")
        for name, levels, lowest in (("sigmas", self.sigmas, 1e-30), ("timesteps", self.timesteps, 0)):
            if levels is not None and len(levels) != self.steps:
                raise UserError(f"student.{name} has {len(levels)} entries for a {self.steps}-step student")
            if levels is not None and (any(b >= a for a, b in zip(levels, levels[1:])) or min(levels) < lowest):
                raise UserError(f"student.{name} must be {'positive' if lowest else 'non-negative'} and strictly "
                                "decreasing")

    def resolved_sigmas(self, schedule: NoiseSchedule | None = None, epsilon: bool = False,
                        scale: float = 1.0) -> list[float]:
        """The student's levels: as given, or the teacher's schedule's for K steps (an ε teacher's start capped at
        start_sigma_max: its x̂_0 carries ε̂'s error times √(1+σ²); sigma_top / sigma_last times `scale`)."""
        if self.sigmas is not None:
            return schedule.given_levels(self.sigmas) if schedule else list(self.sigmas)
        if self.timesteps is not None:
            return (schedule or NoiseSchedule.karras()).timestep_levels(self.timesteps)
        top, last, start = self.sigma_top * scale, self.sigma_last * scale, self.start_sigma_max if epsilon else 0
        return (schedule or NoiseSchedule.karras()).student_levels(self.steps, top, last, start, self.flow_terminal)


def full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device)


def noised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x + append_dims(sigma, x.ndim) * torch.randn_like(x)


class FewStepStudent:
    """Samples of a K-step generator G on fixed levels σ_0 > ... > σ_{K-1}, for training.

    Backward simulation (DMD2): for a step k, roll the generator through steps 0..k-1 without gradients,
    re-noise to σ_k with fresh noise, and run step k with gradients; every step's output is trained to be a sample
    of the data distribution. DMD2's code draws one k per batch (the same on every process: `spread=False`); by
    default the K steps are instead spread evenly over each batch (`spread=True`), so every step gets a share of
    every update rather than all of every K-th (the same expected gradient, less variance).
    """

    def __init__(self, sigmas: list[float], shape: tuple[int, ...], device, spread: bool = True,
                 input_scale: float | None = None):
        self.sigmas, self.shape, self.device, self.spread = sigmas, tuple(shape), device, spread
        self.input_scale = input_scale or sigmas[0]  # z -> the first step's input (the teacher's own start)
        self.active = len(sigmas)  # steps 0..active-1 are trained (fewer while only the first step is)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn((n,) + self.shape, device=self.device)

    def pick_step(self, shared: torch.Generator, n: int) -> torch.Tensor:
        """The step each of n samples is trained at (drawn from the generator every process shares)."""
        K = self.active
        if self.spread and K > 1:
            steps = torch.arange(n) % K
            steps = steps[torch.randperm(n, generator=shared)]
        else:
            steps = torch.full((n,), int(torch.randint(K, (1,), generator=shared)))
        return steps.to(self.device)

    def sigma_of(self, steps: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.sigmas, device=steps.device)[steps]

    @torch.no_grad()
    def input_at(self, generator, steps: torch.Tensor, cond) -> torch.Tensor:
        """Each sample's input to its step: σ_0 z for step 0, else the re-noised output of the step before."""
        x = self.noise(len(steps)) * self.input_scale
        for j in range(int(steps.max()) if len(steps) else 0):
            go = steps > j
            x0 = generator(x[go], full(x[go], self.sigmas[j]), cond[go] if cond is not None else None).float()
            x[go] = noised(x0, full(x0, self.sigmas[j + 1]))
        return x

    def sample(self, generator, cond, steps: torch.Tensor, grad: bool) -> torch.Tensor:
        x = self.input_at(generator, steps, cond)
        with torch.set_grad_enabled(grad):
            return generator(x, self.sigma_of(steps), cond)


def student_network_config(net_cfg: dict, student: StudentConfig) -> dict:
    """The network config a student is saved with: the teacher's, plus its pure-noise feature cap (MLPs)."""
    return {**net_cfg, "noise_fourier_cap": student.fourier_cap} if student.fourier_cap > 0 else dict(net_cfg)


def refuse_student_options(cfg, method: str, backsim: bool = True) -> None:
    """For methods with their own critic and step scheme: say so rather than ignore a K-step student option.
    `backsim`: whether the method draws its steps as student.backsim says (msd does, tdm has its own roll-out)."""
    student = cfg.student
    if student.steps > 1 and (student.critic_per_step or student.first_only):
        raise UserError(f"{method} does not use student.critic_per_step or student.first_only; set them to "
                        "false / 0 (they are options of dmd2, dmd and fdistill)")
    if student.steps > 1 and not backsim and student.backsim != StudentConfig.backsim:
        raise UserError(f"{method} does not use student.backsim (it trains every step on its own roll-out); leave "
                        f"it at {StudentConfig.backsim} (it is an option of dmd2, dmd, fdistill and msd)")
