"""Samplers over a denoiser D(x, σ, cond) in σ-space (see schedules.py). Pure functions, no I/O.

Teachers solve the probability-flow ODE dx/dσ = (x - D(x, σ)) / σ on a Karras grid (Euler, or Heun = EDM
Algorithm 1 without churn); a few-step student maps noise to data and, between its steps, re-noises (or moves
DDIM-like: TDM's students).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .parameterization import append_dims
from .schedules import SIGMA_MAX, SIGMA_MIN, karras_sigmas

Denoiser = Callable[..., torch.Tensor]
ODE_SOLVERS = ("heun", "euler")
SOLVERS = ODE_SOLVERS + ("ancestral",)  # ancestral: DDPM's stochastic sampler, for teachers only


def _full(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def teacher_grid(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> list[float]:
    """The noise levels of a `steps`-step ODE solve: Karras grid, then 0."""
    return [float(s) for s in karras_sigmas(steps, sigma_min, sigma_max)] + [0.0]


SAMPLING_ELEMENTS = 2 ** 19  # sample values per network call while sampling: 170 images of 3x32x32, 668 of 28x28


class _Chunked:
    """A denoiser called on at most `size` samples at a time: sampling n images at once would hold every layer's
    activations for all n (a 36M-parameter 32x32 UNet needs about 12 MiB per image). The noise is drawn for all n
    as before, so the samples do not depend on the chunk."""

    def __init__(self, denoiser, size: int):
        self.denoiser, self.size = denoiser, size

    def __call__(self, x, sigma, cond=None):
        if len(x) <= self.size:
            return self.denoiser(x, sigma, cond)
        parts = [slice(i, i + self.size) for i in range(0, len(x), self.size)]
        return torch.cat([self.denoiser(x[p], sigma[p], None if cond is None else cond[p]) for p in parts])


def in_chunks(denoiser: Denoiser, shape) -> Denoiser:
    """`denoiser` run on chunks of SAMPLING_ELEMENTS sample values (samples of `shape`) at most."""
    return _Chunked(denoiser, max(1, SAMPLING_ELEMENTS // math.prod(shape)))


def limit_x0(denoiser: Denoiser, limit: dict | None) -> Denoiser:
    """The denoiser with its x̂_0 limited as the teacher's own sampler limits it: `{"range": r}` clamps to ±r
    (diffusers' `clip_sample`), `{"range": r, "ratio": p}` is dynamic thresholding (Imagen; diffusers'
    `thresholding`: per sample, s = the p-quantile of |x̂_0| kept in [1, r], then clamp to ±s and divide by s).
    A pixel-space DDPM's x̂_0 = (x_t - √(1-ᾱ) ε̂) / √ᾱ leaves the data's range at high noise; its sampler clips."""
    if not limit:
        return denoiser

    def limited(x, sigma, cond=None):
        x0 = denoiser(x, sigma, cond)
        if limit.get("ratio") is None:
            return x0.clamp(-limit["range"], limit["range"])
        s = torch.quantile(x0.abs().flatten(1).float(), limit["ratio"], dim=1).clamp(1, limit["range"])
        s = s.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return limited


@torch.no_grad()
def ode_sample(denoiser: Denoiser, noise: torch.Tensor, steps: int, solver: str = "heun", cond=None,
               sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, limit: dict | None = None) -> torch.Tensor:
    """Solve the PF-ODE from noise ~ N(0, I) (scaled by sigma_max here) in `steps` steps.

    Heun uses 2 evaluations per step except the last (to σ = 0), so NFE = 2 * steps - 1; Euler uses `steps`.
    """
    return ode_trajectory(denoiser, noise, steps, solver, cond, (), sigma_min, sigma_max, limit)[0]


@torch.no_grad()
def ode_trajectory(denoiser: Denoiser, noise: torch.Tensor, steps: int, solver: str = "heun", cond=None,
                   levels: Sequence[float] = (), sigma_min: float = SIGMA_MIN,
                   sigma_max: float = SIGMA_MAX, limit: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ode_sample, and the ODE's states at `levels` (each in (0, sigma_max)), which join the solver's grid;
    `limit`: the teacher's own x̂_0 limit (see limit_x0)."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose euler or heun)")
    denoiser = limit_x0(denoiser, limit)
    sig = teacher_grid(steps, sigma_min, sigma_max)
    if levels:
        sig = sorted(set(sig[:-1]) | {float(v) for v in levels}, reverse=True) + [0.0]
    keep = {float(v) for v in levels}
    x, states = noise * sig[0], {}
    for s_cur, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoiser(x, _full(x, s_cur), cond)) / s_cur
        x_next = x + (s_next - s_cur) * d
        if solver == "heun" and s_next > 0:
            d2 = (x_next - denoiser(x_next, _full(x, s_next), cond)) / s_next
            x_next = x + (s_next - s_cur) * 0.5 * (d + d2)
        x = x_next
        if s_next in keep:
            states[s_next] = x
    return x, [states[float(v)] for v in levels]


@torch.no_grad()
def ancestral_sample(denoiser: Denoiser, noise: torch.Tensor, steps: int, cond=None, sigma_min: float = SIGMA_MIN,
                     sigma_max: float = SIGMA_MAX, limit: dict | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's ancestral sampler over the same Karras grid, in σ-space: from σ to σ' it draws from the DDPM
    posterior q(x_σ' | x_σ, x̂_0) = N(x̂_0 + (σ'/σ)² (x_σ - x̂_0), σ'² (1 - (σ'/σ)²) I). On a DDPM teacher's own
    1000 levels this is its own sampler; fresh noise each step corrects model error that a deterministic ODE
    path accumulates. NFE = steps."""
    denoiser = limit_x0(denoiser, limit)
    sig = teacher_grid(steps, sigma_min, sigma_max)
    x = noise * sig[0]
    for s, s_next in zip(sig[:-1], sig[1:]):
        x0 = denoiser(x, _full(x, s), cond)
        r = (s_next / s) ** 2
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x0 + r * (x - x0) + s_next * (1 - r) ** 0.5 * eps
    return x


def teacher_nfe(steps: int, solver: str) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


MOVES = ("renoise", "ddim")


def few_step_sample(generator: Denoiser, noise: torch.Tensor, sigmas: Sequence[float], cond=None,
                    renoise: torch.Tensor | Sequence[torch.Tensor] | None = None,
                    input_scale: float | None = None, move: str = "renoise") -> torch.Tensor:
    """A K-step student: x̂_0 = G(x_0, σ_0) from x_0 = s z with s = `input_scale` (default σ_0); then for k ≥ 1
    x̂_0 = G(x_k, σ_k), where x_k is x̂_0 moved to σ_k. NFE = K.

    move="renoise": x_k = x̂_0 + σ_k ε_k with fresh noise (DMD2's backward simulation); `renoise` optionally
    supplies the ε_k (K-1 tensors) for reproducibility. move="ddim": x_k = x̂_0 + σ_k ε̂ with the student's own
    predicted noise ε̂ = (x_{k-1} - x̂_0) / σ_{k-1} (DDIM with η = 0, TDM's trajectory): only z is random.
    """
    x = noise * (input_scale or sigmas[0])
    x0 = generator(x, _full(noise, sigmas[0]), cond)
    for k, s in enumerate(sigmas[1:]):
        x = move_to(x0, s, x, sigmas[k], move, renoise[k] if renoise is not None else None)
        x0 = generator(x, _full(x0, s), cond)
    return x0


def move_to(x0: torch.Tensor, sigma, x: torch.Tensor, sigma_from, move: str = "renoise",
            eps: torch.Tensor | None = None) -> torch.Tensor:
    """A student's output x̂_0 (from input x at level sigma_from) taken to level `sigma`: re-noised with fresh
    noise `eps` (drawn when None), or DDIM-like along its own predicted noise (x - x̂_0) / sigma_from. The levels
    are numbers or one per sample."""
    sigma, sigma_from = (append_dims(v, x0.ndim) if torch.is_tensor(v) else v for v in (sigma, sigma_from))
    if move == "ddim":
        return x0 + sigma * (x - x0) / sigma_from
    return x0 + sigma * (torch.randn_like(x0) if eps is None else eps)
