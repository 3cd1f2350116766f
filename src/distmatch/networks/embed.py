"""Noise-level (and class) embedding shared by the backbones."""
from __future__ import annotations

import math

import torch
from torch import nn


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise = ln(σ)/4, plus a learned class embedding (index num_classes = no class)."""

    def __init__(self, width: int, num_classes: int = 0, freqs: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), freqs)))
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, width), nn.SiLU(), nn.Linear(width, width))
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.num_classes = num_classes

    def forward(self, c_noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a = c_noise.float()[:, None] * self.freqs[None]
        emb = self.mlp(torch.cat([a.sin(), a.cos()], dim=1))
        if self.classes is not None:
            if cond is None:
                cond = torch.full_like(c_noise, self.num_classes, dtype=torch.long)
            emb = emb + self.classes(cond)
        return nn.functional.silu(emb)
