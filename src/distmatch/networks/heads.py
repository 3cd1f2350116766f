"""GAN heads on a critic's features (DMD2: a small classifier on the fake-score network's bottleneck)."""
from __future__ import annotations

import torch
from torch import nn

from .unet import _groups


class VectorHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).squeeze(-1)


class ImageHead(nn.Module):
    """Conv → GroupNorm → SiLU (strided while the map is large) → global pool → linear logit."""

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        layers, h = [], min(size)
        while True:
            stride = 2 if h >= 8 else 1
            layers += [nn.Conv2d(channels, channels, 3, stride=stride, padding=1), nn.GroupNorm(_groups(channels), channels),
                       nn.SiLU()]
            h = (h + 1) // stride
            if stride == 1:
                break
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(channels, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(feats).mean(dim=(2, 3))).squeeze(-1)


def build_head(backbone: nn.Module) -> nn.Module:
    size = getattr(backbone, "feature_size", None)
    return ImageHead(backbone.feature_dim, size) if size is not None else VectorHead(backbone.feature_dim)
