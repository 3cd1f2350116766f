"""Pieces every distribution-matching method shares: the teacher's (real) score with guidance, the critic
(fake score + optional GAN head), the few-step student with backward simulation, and the options they have in common.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..networks.heads import build_head
from ..parameterization import append_dims
from ..schedules import SIGMA_MAX, student_sigmas


@dataclass
class StudentConfig:
    steps: int = 1                        # K, the student's network evaluations per sample
    sigmas: list[float] | None = None     # the K noise levels it starts its steps from (default: schedules.student_sigmas)
    sigma_top: float = 7.0                # default levels for K > 1: geometric from sigma_top ...
    sigma_last: float = 0.35              # ... down to sigma_last (for σ_data = 0.5 data)

    def validate(self):
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if self.sigmas is not None:
            if len(self.sigmas) != self.steps:
                raise UserError(f"student.sigmas has {len(self.sigmas)} levels but --steps is {self.steps}")
            if any(b >= a for a, b in zip(self.sigmas, self.sigmas[1:])) or min(self.sigmas) <= 0:
                raise UserError("student.sigmas must be positive and strictly decreasing")

    def resolved_sigmas(self) -> list[float]:
        return list(self.sigmas) if self.sigmas is not None else student_sigmas(self.steps, SIGMA_MAX, self.sigma_top, self.sigma_last)


class RealScore(nn.Module):
    """The teacher's denoiser, with classifier-free guidance x̂_u + s (x̂_c - x̂_u) when s != 1 (real score only)."""

    def __init__(self, teacher: nn.Module, guidance: float = 1.0, num_classes: int = 0):
        super().__init__()
        self.teacher, self.guidance, self.num_classes = teacher, guidance, num_classes

    @torch.no_grad()
    def forward(self, x, sigma, cond=None):
        if cond is None or self.guidance == 1.0 or self.num_classes == 0:
            return self.teacher(x, sigma, cond).float()
        null = torch.full_like(cond, self.num_classes)
        both = self.teacher(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])).float()
        cond_x0, uncond_x0 = both.chunk(2)
        return uncond_x0 + self.guidance * (cond_x0 - uncond_x0)


class Critic(nn.Module):
    """The fake score: a denoiser trained on student samples; optionally a GAN head on its features."""

    def __init__(self, denoiser: nn.Module, gan: bool):
        super().__init__()
        self.denoiser = denoiser
        self.head = build_head(denoiser.backbone) if gan else None

    def forward(self, x, sigma, cond=None):
        if self.head is None:
            return self.denoiser(x, sigma, cond), None
        x0, feats = self.denoiser(x, sigma, cond, return_features=True)
        return x0, self.head(feats.float())


def full(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device)


def noised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x + append_dims(sigma, x.ndim) * torch.randn_like(x)


class FewStepStudent:
    """Samples of a K-step generator G on fixed levels σ_0 > ... > σ_{K-1}, for training.

    Backward simulation (DMD2): pick a step k (the same on every process), roll the generator through steps
    0..k-1 without gradients, re-noise to σ_k with fresh noise, and run step k with gradients; every step's
    output is trained to be a sample of the data distribution.
    """

    def __init__(self, sigmas: list[float], shape: tuple[int, ...], device):
        self.sigmas, self.shape, self.device = sigmas, tuple(shape), device

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn((n,) + self.shape, device=self.device)

    @torch.no_grad()
    def input_at(self, generator, k: int, n: int, cond) -> torch.Tensor:
        """The input of step k: σ_0 z for k = 0, else the re-noised output of step k-1."""
        x = self.noise(n) * self.sigmas[0]
        for j in range(k):
            x0 = generator(x, full(x, self.sigmas[j]), cond).float()
            x = noised(x0, full(x0, self.sigmas[j + 1]))
        return x

    def pick_step(self, shared: torch.Generator) -> int:
        return int(torch.randint(len(self.sigmas), (1,), generator=shared))

    def sample(self, generator, n: int, cond, k: int, grad: bool) -> torch.Tensor:
        x = self.input_at(generator, k, n, cond)
        with torch.set_grad_enabled(grad):
            return generator(x, full(x, self.sigmas[k]), cond)


def draw_labels(class_weights: list[float], n: int, device) -> torch.Tensor:
    """Class labels drawn with the data's class frequencies (for steps that see no data batch)."""
    w = torch.tensor(class_weights, dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True).to(device)


def init_copy(net: nn.Module, device) -> nn.Module:
    """A trainable copy of the teacher's network (students and critics start from the teacher)."""
    out = copy.deepcopy(net).to(device)
    out.requires_grad_(True)
    out.train()
    return out
