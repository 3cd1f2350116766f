"""Backbone for vector data (any dimension D): a residual MLP on random Fourier features of its input.

A plain MLP on raw coordinates tends to sit on the "single Gaussian" denoiser for thousands of steps; fixed
Fourier features of c_in·x at several frequency scales give it the sharp responses multimodal data needs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .embed import NoiseEmbedding


# Inputs at σ >= this are pure noise: the first step of a generator (a distilled student), never a denoising input
# that carries data.
NOISE_INPUT_SIGMA = 10.0


class FourierFeatures(nn.Module):
    """Fixed random features [x, sin(2π x B), cos(2π x B)], B's columns at log-spaced frequency scales.

    `noise_cap` > 0: rows flagged as pure noise see only the features of frequency scale <= noise_cap (the others
    are zeroed). A one-step generator maps noise z to data; with features of z at scales up to 16 it carves z-space
    into hundreds of islands, each edged with samples that fall between the data's modes."""

    def __init__(self, dim: int, n: int, max_scale: float, seed: int = 0, noise_cap: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scales = torch.logspace(math.log10(0.25), math.log10(max_scale), n)
        basis = torch.randn(dim, n, generator=g) / math.sqrt(dim) * scales
        self.register_buffer("basis", basis)
        self.register_buffer("scales", scales, persistent=False)  # derived: checkpoints hold only the basis
        self.register_buffer("noise_keep", torch.ones(2 * n), persistent=False)
        self.set_noise_cap(noise_cap)
        self.out_dim = dim + 2 * n

    def set_noise_cap(self, cap: float) -> None:
        self.noise_cap = float(cap)
        keep = (self.scales <= cap).float() if cap > 0 else torch.ones_like(self.scales)
        self.noise_keep.copy_(keep.repeat(2))

    def forward(self, x: torch.Tensor, is_noise: torch.Tensor | None = None) -> torch.Tensor:
        z = 2 * math.pi * x @ self.basis
        f = torch.cat([z.sin(), z.cos()], dim=1)
        if self.noise_cap > 0 and is_noise is not None:
            keep = self.noise_keep.to(f.dtype)
            f = f * torch.where(is_noise[:, None], keep, torch.ones_like(keep))
        return torch.cat([x, f], dim=1)


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(y)


class MLPBackbone(nn.Module):
    """F(c_in x, c_noise, class) for vectors; `features` are the last hidden layer (for GAN heads)."""

    def __init__(self, dim: int, width: int = 256, depth: int = 3, fourier: int = 64, fourier_scale: float = 16.0,
                 num_classes: int = 0, noise_cap: float = 0.0):
        super().__init__()
        self.dim, self.width, self.num_classes = dim, width, num_classes
        self.fourier = FourierFeatures(dim, fourier, fourier_scale, noise_cap=noise_cap) if fourier > 0 else None
        in_dim = self.fourier.out_dim if self.fourier is not None else dim
        self.inp = nn.Linear(in_dim, width)
        self.noise_emb = NoiseEmbedding(width, num_classes)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        self.feature_dim = width

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                return_features: bool = False):
        emb = self.noise_emb(c_noise, cond)
        if self.fourier is not None:
            x = self.fourier(x, c_noise >= math.log(NOISE_INPUT_SIGMA) / 4)  # c_noise = ln(σ)/4
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        feats = nn.functional.silu(self.out_norm(h))
        out = self.out(feats)
        return (out, feats) if return_features else out
