"""Rebuilding a trained student for sampling: one generator, or several behind a class router (multi-student)."""
from __future__ import annotations

import torch
from torch import nn

from ..networks import build_denoiser


class ClassRouter(nn.Module):
    """Sends each class to the one student that owns it; NFE stays that of a single student."""

    def __init__(self, students: list[nn.Module], owner: list[int]):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.register_buffer("owner", torch.as_tensor(owner, dtype=torch.long))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("a multi-student model needs class labels")
        out = torch.empty_like(x)
        who = self.owner[cond.clamp(max=len(self.owner) - 1)]
        for i, student in enumerate(self.students):
            mask = who == i
            if mask.any():
                out[mask] = student(x[mask], sigma[mask], cond[mask]).to(out.dtype)
        return out


def _strip(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def build_student_generator(cfg: dict, shape, weights: dict[str, torch.Tensor]) -> nn.Module:
    k, sd = int(cfg.get("num_classes", 0)), cfg.get("sigma_data", 0.5)
    if "router" not in cfg:
        gen = build_denoiser(cfg["network"], shape, k, sd)
        gen.load_state_dict(_strip(weights, "gen."))
        return gen.requires_grad_(False)
    students = []
    for i, net_cfg in enumerate(cfg["router"]["networks"]):
        gen = build_denoiser(net_cfg, shape, k, sd)
        gen.load_state_dict(_strip(weights, f"students.{i}."))
        students.append(gen.requires_grad_(False))
    return ClassRouter(students, cfg["router"]["owner"])
