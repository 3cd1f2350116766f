"""Exponential moving averages of weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay for the EMA's next update after `updates` earlier ones: with warm-up, min(decay, (1 + n) / (10 + n)),
    so a long horizon does not drag the starting weights along for most of a short run."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach().to(pe.dtype), 1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)
