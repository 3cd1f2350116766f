"""A network seen as an EDM-preconditioned denoiser D(x, σ, cond) = c_skip x + c_out F(c_in x, c_noise, cond).

Teachers trained by distmatch, students and critics all use this wrapper, so they share one interface.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parameterization import append_dims, edm_coefficients
from ..schedules import SIGMA_DATA


class EDMDenoiser(nn.Module):
    def __init__(self, backbone: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.backbone = backbone
        self.sigma_data = sigma_data

    @property
    def num_classes(self) -> int:
        return getattr(self.backbone, "num_classes", 0)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None,
                return_features: bool = False):
        sigma = sigma.to(torch.float32)
        c_skip, c_out, c_in, c_noise = (append_dims(c, x.ndim) for c in edm_coefficients(sigma, self.sigma_data))
        out = self.backbone((c_in * x).to(x.dtype), c_noise.flatten(), cond, return_features=return_features)
        f, feats = out if return_features else (out, None)
        d = c_skip * x + c_out * f.to(torch.float32)
        return (d, feats) if return_features else d
