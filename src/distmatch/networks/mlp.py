"""Backbone for vector data (any dimension D): a residual MLP on random Fourier features of its input.

A plain MLP on raw coordinates tends to sit on the "single Gaussian" denoiser for thousands of steps; fixed
Fourier features of c_in·x at several frequency scales give it the sharp responses multimodal data needs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .embed import NoiseEmbedding


class FourierFeatures(nn.Module):
    """Fixed random features [x, sin(2π x B), cos(2π x B)], B's columns at log-spaced frequency scales."""

    def __init__(self, dim: int, n: int, max_scale: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scales = torch.logspace(math.log10(0.25), math.log10(max_scale), n)
        basis = torch.randn(dim, n, generator=g) / math.sqrt(dim) * scales
        self.register_buffer("basis", basis)
        self.out_dim = dim + 2 * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 2 * math.pi * x @ self.basis
        return torch.cat([x, z.sin(), z.cos()], dim=1)


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
                 num_classes: int = 0):
        super().__init__()
        self.dim, self.width, self.num_classes = dim, width, num_classes
        self.fourier = FourierFeatures(dim, fourier, fourier_scale) if fourier > 0 else None
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
        h = self.inp(self.fourier(x) if self.fourier is not None else x)
        for block in self.blocks:
            h = block(h, emb)
        feats = nn.functional.silu(self.out_norm(h))
        out = self.out(feats)
        return (out, feats) if return_features else out
