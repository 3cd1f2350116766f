"""The small interface every training method implements (teacher training and each distillation method).

The trainer owns the loop, devices, logging and checkpoints; a method owns its networks and losses:
    modules()    -> every nn.Module whose state must be saved (trainable nets, EMA copies, method buffers)
    optimizers() -> the optimizers to save and to schedule
    step(batch, it) -> dict of float logs
    export()     -> (weights, model_config) that `distmatch sample` needs to rebuild the trained sampler
    sampler()    -> the network `distmatch sample` will run once the run is saved (its EMA), for previews
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import checkpoint as ckpt

from .ema import ema_decay


@dataclass
class Batch:
    x: torch.Tensor                  # normalised data, on the training device
    labels: torch.Tensor | None      # class indices, or None for unconditional data


@dataclass
class Context:
    """What a method may use from its surroundings."""
    accelerator: Any
    device: torch.device
    train: Any                       # the TrainConfig
    it: int = 0                      # the iteration being run (set by the trainer before each step)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def ema_decay(self, updates: int) -> float:
        """train.ema for the next EMA update after `updates` earlier ones (with train.ema_warmup, warmed up)."""
        return ema_decay(self.train.ema, updates, self.train.ema_warmup)

    def autocast(self):
        return self.accelerator.autocast()

    def prepare(self, module: nn.Module) -> nn.Module:
        return self.accelerator.prepare(module)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(module)

    def make_optimizer(self, params, lr: float | None = None, betas=None, weight_decay: float | None = None):
        t = self.train
        opt = torch.optim.AdamW(params, lr=lr if lr is not None else t.lr,
                                betas=tuple(betas) if betas is not None else tuple(t.betas),
                                weight_decay=t.weight_decay if weight_decay is None else weight_decay)
        return self.accelerator.prepare(opt)

    def clip(self, module: nn.Module) -> float:
        if self.train.grad_clip and self.train.grad_clip > 0:
            return float(self.accelerator.clip_grad_norm_(module.parameters(), self.train.grad_clip))
        return 0.0


class Method:
    """Base class with the defaults most methods share; subclasses override what they need."""

    name = "method"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        """Whether training reads the data set (data-free methods return False)."""
        return True

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        raise NotImplementedError

    def export(self) -> tuple[dict[str, torch.Tensor], dict]:
        raise NotImplementedError

    def sampler(self) -> nn.Module:
        raise NotImplementedError

    def on_resume(self, it: int) -> None:
        """Called after a checkpoint was loaded (for caches derived from the loaded state)."""


def model_writer(model_config: dict, prefix: str = "", extra: dict | None = None) -> Callable:
    """`write(method, folder, best=None)`: the model being trained as a model folder (its weights named with
    `prefix`, and `extra` tensors beside them: a latent student's autoencoder), for the run's end and for the best
    of its scores (`best`: its iteration and score)."""
    def write(method, folder: Path, best: dict | None = None) -> None:
        weights, more = method.export()
        folder.mkdir(parents=True, exist_ok=True)
        ckpt.save_model(folder, {**{prefix + k: v for k, v in weights.items()}, **(extra or {})},
                        {**model_config, **more, **({"best": best} if best else {})})

    return write
