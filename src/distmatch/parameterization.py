"""Conversions between what a network predicts and the denoised sample x̂_0, in σ-space (see schedules.py).

With x_σ = x_0 + σ ε:
    ε̂ = (x_σ - x̂_0) / σ,        x̂_0 = x_σ - σ ε̂
EDM preconditioning (Karras et al. 2022, table 1): D(x, σ) = c_skip x + c_out F(c_in x, c_noise).
Pure torch, no I/O.
"""
from __future__ import annotations

import torch


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample tensor of shape (B,) so it broadcasts against a (B, ...) tensor of rank ndim."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM's c_skip, c_out, c_in, c_noise for noise level(s) sigma."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ σ_d)²: makes the x̂_0 regression loss unit-variance at every σ."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (x - x0) / append_dims(sigma, x.ndim)


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x - append_dims(sigma, x.ndim) * eps


def vp_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """σ of a variance-preserving step with cumulative ᾱ: x_vp = √ᾱ x_0 + √(1-ᾱ) ε = x_σ / √(1+σ²)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def x0_from_vp_v(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂_0 from a v-prediction, with x the σ-space input (x_vp = x / √(1+σ²))."""
    s = append_dims(sigma, x.ndim)
    return x / (1 + s ** 2) - s / (1 + s ** 2).sqrt() * v


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """σ of rectified-flow time t (x_t = (1-t) x_0 + t ε = x_σ / (1+σ)): σ = t / (1-t)."""
    return t / (1 - t)


def x0_from_velocity(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂_0 from a flow-matching velocity v = ε - x_0, with x the σ-space input."""
    s = append_dims(sigma, x.ndim)
    t = s / (1 + s)
    return x / (1 + s) - t * velocity
