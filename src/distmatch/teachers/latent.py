"""A latent diffusion model's autoencoder, at the edges of distillation: the teacher and the student work on its
latents z = (E(x) - shift) · scale, as the model's pipeline made them; data come in as images and are encoded,
samples go out as images, decoded by x = D(z / scale + shift) (LDMPipeline, DiTPipeline; shift is 0 but for the
autoencoders that name a shift_factor).

An AutoencoderKL encodes to its posterior's mean: the data as the decoder reads them, without the posterior's
noise, which the diffusion's own noise drowns at every level a student is trained on. A VQModel encodes to its
encoder's output, which its decoder quantises, as the pipeline's latents are.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from ..errors import UserError

AUTOENCODERS = ("AutoencoderKL", "VQModel")
FOLDERS = ("vae", "vqvae")  # where a pipeline keeps its autoencoder


class LatentCodec(nn.Module):
    """Images in [-1, 1] <-> the diffusion model's latents."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        c = vae.config
        self.scale = float(c.get("scaling_factor") or 1.0)
        self.shift = float(c.get("shift_factor") or 0.0)

    @property
    def kind(self) -> str:
        return type(self.vae).__name__

    def config(self) -> dict:
        """What rebuilds it: the autoencoder's class and config (its weights are saved beside the student's)."""
        return {"class": self.kind, "config": {k: v for k, v in self.vae.config.items() if not k.startswith("_")}}

    @classmethod
    def rebuild(cls, cfg: dict, weights: dict[str, torch.Tensor]) -> "LatentCodec":
        import diffusers

        if cfg.get("class") not in AUTOENCODERS:
            raise UserError(f"unknown autoencoder {cfg.get('class')!r} in a saved model (known: "
                            f"{', '.join(AUTOENCODERS)})")
        vae = getattr(diffusers, cfg["class"]).from_config(cfg["config"])
        vae.load_state_dict(weights)
        return cls(vae)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> latents, in batches on the autoencoder's device, back on the CPU."""
        from tqdm.auto import tqdm

        device = next(self.vae.parameters()).device
        out = []
        for i in tqdm(range(0, len(x), batch_size), desc="encoding the data", unit="batch", leave=False,
                      file=sys.stderr, dynamic_ncols=True, disable=not progress):
            enc = self.vae.encode(x[i:i + batch_size].to(device))
            h = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
            out.append(((h - self.shift) * self.scale).float().cpu())
        return torch.cat(out)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images, clamped to [-1, 1] as the pipelines clamp them."""
        return self.vae.decode(z / self.scale + self.shift).sample.clamp(-1, 1)

    @torch.no_grad()
    def image_shape(self, latent_shape) -> tuple[int, ...]:
        """The shape of the images that latents of `latent_shape` decode to."""
        device = next(self.vae.parameters()).device
        return tuple(self.decode(torch.zeros((1, *latent_shape), device=device)).shape[1:])
