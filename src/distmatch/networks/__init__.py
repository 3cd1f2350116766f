"""Network registry: a network config + data shape -> an EDM-preconditioned denoiser."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..teachers.edm import EDMDenoiser


@dataclass
class NetworkConfig:
    kind: str = "auto"            # auto (mlp for vectors, unet for images) | mlp | unet
    # mlp
    width: int = 256              # MLP: hidden width
    depth: int = 3                # MLP: residual blocks
    fourier: int = 64             # MLP: random Fourier features of the input (0 = raw coordinates)
    fourier_scale: float = 16.0   # MLP: highest frequency scale of those features
    noise_fourier_cap: float = 0.0  # pure-noise inputs (σ >= 10) see only Fourier features of scale <= this (0 = all)
    # unet
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # U-Net: channels per resolution
    blocks: int = 1               # U-Net: residual blocks per resolution
    attention: bool = False       # U-Net: self-attention at the lowest resolution
    dropout: float = 0.0          # U-Net: dropout in residual blocks

    def validate(self):
        if self.kind not in ("auto", "mlp", "unet"):
            raise UserError(f"config key 'network.kind' must be auto, mlp or unet, got {self.kind!r}")
        for key, bad in (("width", self.width < 1), ("depth", self.depth < 0), ("blocks", self.blocks < 1),
                         ("channels", not self.channels or min(self.channels) < 1)):
            if bad:
                raise UserError(f"config key 'network.{key}' must be {'>= 0' if key == 'depth' else 'positive'}"
                                f"{' (a list of them)' if key == 'channels' else ''}, got {getattr(self, key)}")
        for key, bad, rule in (("fourier", self.fourier < 0, ">= 0"), ("fourier_scale", self.fourier_scale <= 0, "> 0"),
                               ("noise_fourier_cap", self.noise_fourier_cap < 0, ">= 0"),
                               ("dropout", not 0 <= self.dropout < 1, "in [0, 1)")):
            if bad:
                raise UserError(f"config key 'network.{key}' must be {rule}, got {getattr(self, key)}")


def resolve_kind(kind: str, shape) -> str:
    if kind == "auto":
        return "mlp" if len(shape) == 1 else "unet"
    if kind == "mlp" and len(shape) != 1:
        raise UserError(f"network.kind=mlp needs vector data, but samples have shape {tuple(shape)}")
    if kind == "unet" and len(shape) != 3:
        raise UserError(f"network.kind=unet needs image data, but samples have shape {tuple(shape)}")
    return kind


def build_backbone(cfg: dict, shape, num_classes: int):
    kind = resolve_kind(cfg["kind"], shape)
    if kind == "mlp":
        from .mlp import MLPBackbone

        return MLPBackbone(shape[0], cfg["width"], cfg["depth"], cfg["fourier"], cfg["fourier_scale"], num_classes,
                           cfg.get("noise_fourier_cap", 0.0))
    from .unet import UNetBackbone

    return UNetBackbone(shape[0], tuple(shape[1:]), cfg["channels"], cfg["blocks"], cfg["attention"],
                        cfg["dropout"], num_classes)


def build_denoiser(cfg: dict, shape, num_classes: int = 0, sigma_data: float = 0.5) -> EDMDenoiser:
    """cfg is a NetworkConfig as a dict (as stored in a run's config.json)."""
    return EDMDenoiser(build_backbone(cfg, shape, num_classes), sigma_data)
