"""wrap_teacher's arguments checked, each refused in one line naming what is wrong."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..samplers import SOLVERS


def checked_wrap(net, sample_shape, solver, clip_sample, value_range, sample_steps) -> tuple[int, ...]:
    """wrap_teacher's arguments checked, each refused in one line; the sample shape as ints."""
    if not isinstance(net, torch.nn.Module):
        raise UserError(f"wrap_teacher takes a torch.nn.Module, got a {type(net).__name__}: put a function in a small "
                        "nn.Module whose forward calls it")
    try:
        shape = tuple(int(s) for s in sample_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise UserError(f"sample_shape must be (D,) for vectors or (C, H, W) for images, got {sample_shape!r}")
    if solver not in SOLVERS:
        raise UserError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if clip_sample is not None and not float(clip_sample) > 0:
        raise UserError(f"clip_sample must be a positive bound on |x̂_0| or None, got {clip_sample}")
    if value_range is not None and (len(value_range) != 2 or not float(value_range[0]) < float(value_range[1])):
        raise UserError(f"value_range must be (low, high) with low < high, got {value_range}")
    if sample_steps is not None and (isinstance(sample_steps, bool) or not isinstance(sample_steps, (int, np.integer))
                                     or sample_steps < 1):
        raise UserError(f"sample_steps must be a whole number >= 1 (or None: the default), got {sample_steps!r}")
    if value_range is not None and len(shape) == 1:
        raise UserError("value_range says what an image network's [-1, 1] stands for; vectors keep their own units")
    return shape


def checked_convention(flow, alphas_cumprod, timesteps, shift, time_scale, num_train_timesteps) -> None:
    """Arguments of one convention given to a network of another are refused, not ignored."""
    if timesteps != "continuous" and (flow or alphas_cumprod is None):
        raise UserError("timesteps= says how a DDPM-style network (alphas_cumprod given) is fed t; a flow or σ-space "
                        "network takes its time as given (adapt a lookup table with a small module)")
    flow_args = {"shift": (shift, 1.0), "time_scale": (time_scale, 1000.0),
                 "num_train_timesteps": (num_train_timesteps, 1000)}
    if given := [k for k, (v, default) in flow_args.items() if v != default and not flow]:
        this = "DDPM-style (levels from alphas_cumprod)" if alphas_cumprod is not None else "a σ-space denoiser"
        raise UserError(f"{', '.join(given)} describe a flow-matching network (flow=True); this one is {this}")


def checked_codec(vae, shape):
    """wrap_teacher's autoencoder as a LatentCodec (None without one), refused in one line when it is not one."""
    if vae is None:
        return None
    from .latent import AUTOENCODERS, LatentCodec

    if type(vae).__name__ not in AUTOENCODERS:
        raise UserError(f"vae must be a diffusers {' or '.join(AUTOENCODERS)}, got a {type(vae).__name__}")
    if len(shape) != 3:
        raise UserError(f"with a vae, sample_shape is the shape of its latents (C, H, W), got {tuple(shape)}")
    codec = LatentCodec(vae)
    try:
        codec.image_shape(shape)
    except RuntimeError as e:
        raise UserError(f"the vae cannot decode latents of shape {tuple(shape)} ({str(e).splitlines()[0][:90]})"
                        ) from None
    return codec


def checked_levels(num_classes, sigma_data, sigma_min, sigma_max, foreign_levels: bool) -> None:
    """wrap_teacher's classes and levels checked, each refused in one line."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise UserError(f"num_classes must be a whole number >= 0 (0: unconditional), got {num_classes!r}")
    if not float(sigma_data) > 0:
        raise UserError(f"sigma_data must be the data's standard deviation (> 0), got {sigma_data}")
    if (sigma_min, sigma_max) != (None, None) and foreign_levels:
        raise UserError("sigma_min / sigma_max are a σ-space denoiser's range; a DDPM-style or flow network's levels "
                        "come from its alphas_cumprod or its flow schedule")
