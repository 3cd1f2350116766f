"""Where a GAN head reads a user's network: the sub-module whose output serves as the critic's features (DMD2's
classifier on the fake score's bottleneck), found in, or checked on, the network's run on two probe samples."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError


def bottleneck(net: nn.Module, call, shape) -> str | None:
    """The sub-module a GAN head reads when the user names none, from `call()` running `net` on two samples. An
    image network: of the modules whose output is a feature map of at least 2x2, those at the fewest pixels (where
    a U-Net turns from encoder to decoder), the outermost, the last of them to run (a diffusers UNet's mid_block).
    A vector network: its last hidden layer (the last module whose output is a (B, F) row of another width than
    the sample's). Only modules whose output depends on the sample count. None if none."""
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out)))
             for name, m in net.named_modules() if name and "parametrizations" not in name.split(".")]
    try:
        with torch.no_grad():
            call()
    except Exception:
        seen = []  # the probe that follows says what is wrong with the network
    finally:
        for hook in hooks:
            hook.remove()
    outs = [(name, o[0] if isinstance(o, (tuple, list)) and o else o) for name, o in seen]
    # only what sees the sample: the probe's two samples give two different rows (a time embedding's are equal)
    outs = [(name, o) for name, o in outs if isinstance(o, torch.Tensor) and o.ndim >= 2
            and o.shape[0] == 2 and not torch.equal(o[0], o[1])]
    if len(shape) == 3:
        maps = [(name, o.shape[2] * o.shape[3]) for name, o in outs if o.ndim == 4 and min(o.shape[2:]) >= 2]
        if not maps:
            return None
        fewest = min(a for _, a in maps)
        names = [name for name, a in maps if a == fewest]
        depth = min(n.count(".") for n in names)
        return [n for n in names if n.count(".") == depth][-1]
    rows = [name for name, o in outs if o.ndim == 2 and o.shape[1] != shape[0]]
    return rows[-1] if rows else None


def check_features(name: str, f: torch.Tensor) -> None:
    """A GAN head reads a row (B, F) or a map (B, C, H, W) that differs between the probe's two samples."""
    if f.ndim not in (2, 4) or f.shape[0] != 2:
        raise UserError(f"the sub-module '{name}' gives features of shape {tuple(f.shape)} for 2 samples; a GAN "
                        "head reads a row (B, F) or a map (B, C, H, W): name another with "
                        "wrap_teacher(..., features=...)")
    if torch.equal(f[0], f[1]):
        raise UserError(f"the sub-module '{name}' gives the same features for every sample (it does not see the "
                        "sample, as a time embedding does not): name one that does with wrap_teacher(..., "
                        "features=...)")


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A transformer's tokens (B, N, D) over a square patch grid as a (B, D, √N, √N) map, which the GAN's image
    head reads as it reads a UNet's bottleneck; any other features as they are."""
    side = math.isqrt(f.shape[1]) if f.ndim == 3 else 0
    if side < 2 or side * side != f.shape[1]:
        return f
    return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)
