"""A user's network seen as the library's denoiser D(x_σ, σ, cond) -> x̂_0 (the σ-space boundary).

Every foreign convention is converted here and nowhere else. `TeacherAdapter` holds the user's network and, when
a GAN head needs them, the output of one named sub-module (the network's bottleneck) as the critic's features.
Subclasses say how σ-space maps to the network's inputs and its prediction back to x̂_0:
    EDMAdapter   the network already is a σ-space denoiser (it returns x̂_0, or ε with x̂_0 = x - σ ε̂)
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UserError
from ..parameterization import append_dims


class TeacherAdapter(nn.Module):
    """D(x_σ, σ, cond) over a user's network `net`; `features` names the sub-module whose output a GAN head reads."""

    convention = "?"

    def __init__(self, net: nn.Module, num_classes: int = 0, features: str | None = None):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.features = features
        self.feature_dim, self.feature_size = 0, None
        if features is not None:
            try:
                net.get_submodule(features)
            except AttributeError:
                raise UserError(f"the network has no sub-module '{features}' to read GAN features from") from None

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        if not return_features:
            return self.denoise(x, sigma.float(), cond)
        with self._capture() as seen:
            x0 = self.denoise(x, sigma.float(), cond)
        return x0, seen[0]

    @contextmanager
    def _capture(self):
        if self.features is None:
            raise UserError("a GAN head needs the critic's features: name the network's bottleneck with "
                            "wrap_teacher(..., features='<sub-module>') or turn the method's GAN off")
        seen = []
        hook = self.net.get_submodule(self.features).register_forward_hook(
            lambda _m, _i, out: seen.append(out[0] if isinstance(out, (tuple, list)) else out))
        try:
            yield seen
        finally:
            hook.remove()

    def probe_features(self, shape) -> None:
        """Run the network once on zeros to learn the features' channels and size (for the GAN head)."""
        if self.features is None:
            return
        p = next(self.parameters(), None)
        x = torch.zeros((1,) + tuple(shape), device=p.device if p is not None else "cpu")
        cond = torch.zeros(1, dtype=torch.long, device=x.device) if self.num_classes else None
        with torch.no_grad():
            _, f = self(x, torch.ones(1, device=x.device), cond, return_features=True)
        self.feature_dim = int(f.shape[1])
        self.feature_size = tuple(f.shape[2:]) if f.ndim == 4 else None

    def config(self) -> dict:
        """What rebuilds this adapter around a fresh copy of the network (the network's own class and weights are
        the user's)."""
        cls = type(self.net)
        return {"kind": "external", "convention": self.convention, "class": f"{cls.__module__}.{cls.__qualname__}",
                "num_classes": self.num_classes, "features": self.features}


class EDMAdapter(TeacherAdapter):
    """A network that is already a σ-space denoiser, called as net(x_σ, σ[, cond]) and returning x̂_0
    (`prediction="x0"`) or the noise ε̂ (`prediction="epsilon"`, x̂_0 = x_σ - σ ε̂)."""

    convention = "edm"

    def __init__(self, net: nn.Module, prediction: str = "x0", num_classes: int = 0, features: str | None = None):
        super().__init__(net, num_classes, features)
        if prediction not in ("x0", "epsilon"):
            raise UserError(f"an EDM-space network predicts x0 or epsilon, got prediction={prediction!r}")
        self.prediction = prediction

    def denoise(self, x, sigma, cond):
        out = self.net(x, sigma, cond) if cond is not None else self.net(x, sigma)
        out = out.float()
        return out if self.prediction == "x0" else x - append_dims(sigma, x.ndim) * out

    def config(self) -> dict:
        return {**super().config(), "prediction": self.prediction}


def rebuild_adapter(cfg: dict, net: nn.Module) -> TeacherAdapter:
    """The adapter described by `cfg` (TeacherAdapter.config) around `net`."""
    if cfg.get("convention") == "edm":
        return EDMAdapter(net, cfg.get("prediction", "x0"), cfg.get("num_classes", 0), cfg.get("features"))
    raise UserError(f"unknown teacher convention {cfg.get('convention')!r} in a saved model")
