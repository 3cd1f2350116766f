"""Rebuilding a trained student for sampling: one generator, or several behind a class router (multi-student)."""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn

from ..errors import UserError, listed
from ..networks import build_denoiser
from ..teachers.adapters import diffusers_network, rebuild_adapter


class ClassRouter(nn.Module):
    """Sends each class to the one student that owns it; NFE stays that of a single student."""

    def __init__(self, students: list[nn.Module], owner: list[int]):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.register_buffer("owner", torch.as_tensor(owner, dtype=torch.long))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("a multi-student model needs class labels")
        self.check_labels(cond)
        out = torch.empty_like(x)
        who = self.owner[cond]
        for i, student in enumerate(self.students):
            mask = who == i
            if mask.any():
                out[mask] = student(x[mask], sigma[mask], cond[mask]).to(out.dtype)
        return out

    def check_labels(self, cond: torch.Tensor) -> None:
        """Only class labels have an owner: no student was trained on the null label of classifier-free guidance
        (index C), so any student it were routed to would give an output it was never distilled for."""
        classes = len(self.owner)
        bad = cond[(cond < 0) | (cond >= classes)]
        if len(bad):
            label = int(bad[0])
            what = " (the null label of classifier-free guidance)" if label == classes else ""
            raise UserError(f"a multi-student model has no student for label {label}{what}; give a class label in "
                            f"0..{classes - 1}")


def build_network(net_cfg: dict, shape, num_classes: int, sigma_data: float, network: nn.Module | None):
    """distmatch's own network from its config, or the user's `network` (a copy) inside the adapter it was
    distilled through."""
    if net_cfg.get("kind") == "diffusers":
        return rebuild_adapter(net_cfg, copy_of(network) if network is not None else diffusers_network(net_cfg))
    if net_cfg.get("kind") != "external":
        return build_denoiser(net_cfg, shape, num_classes, sigma_data)
    if network is None:
        raise UserError(f"this student was distilled from a network defined in Python ({net_cfg['class']}); only "
                        "Python rebuilds it: distmatch.load(path, network=<an instance of that class>) samples it "
                        "(it cannot be exported: a diffusers pipeline runs diffusers models only)")
    if (given := f"{type(network).__module__}.{type(network).__qualname__}") != net_cfg.get("class", given):
        print(f"warning: this student was distilled from a {net_cfg['class']}; network= is a {given}, used as "
              "given", file=sys.stderr)
    return rebuild_adapter(net_cfg, copy_of(network))


def copy_of(network: nn.Module) -> nn.Module:
    """A copy of the user's network for a student's weights, or one line on why it cannot be copied."""
    try:
        return copy.deepcopy(network)
    except RuntimeError as e:
        raise UserError(f"the network given cannot be copied ({str(e).splitlines()[0][:90]}...); "
                        "torch.nn.utils.weight_norm is the usual cause: torch.nn.utils.parametrizations.weight_norm "
                        "can be") from None


def _strip(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _with_weights(gen: nn.Module, weights: dict, network: nn.Module | None) -> nn.Module:
    given = f"the network given ({type(network).__name__})" if network is not None else "its network"
    expected = gen.state_dict().keys()
    missing, unexpected = [k for k in expected if k not in weights], [k for k in weights if k not in expected]
    if expected and len(missing) == len(expected):
        raise UserError(f"the student's weights do not fit {given}: its weights file holds none of its "
                        f"{len(expected)} weights (another model's weights?)")
    if missing or unexpected:  # named a few at a time: torch lists every key, a screenful for a U-Net
        parts = ([f"missing {listed(missing, 4)}"] if missing else []) + \
            ([f"not its own {listed(unexpected, 4)}"] if unexpected else [])
        raise UserError(f"the student's weights do not fit {given}: {'; '.join(parts)}")
    try:
        gen.load_state_dict(weights)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).splitlines()[0])
        raise UserError(f"the student's weights do not fit {given}: {detail}") from None
    return gen.requires_grad_(False)


def build_student_generator(cfg: dict, shape, weights: dict[str, torch.Tensor],
                            network: nn.Module | None = None) -> nn.Module:
    """The trained generator of a student's config and weights; `network`: an instance of the user's own network
    class, for students of a teacher given as a Python module (its class cannot be rebuilt from the config)."""
    k, sd = int(cfg.get("num_classes", 0)), cfg.get("sigma_data", 0.5)
    if "router" not in cfg:
        return _with_weights(build_network(cfg["network"], shape, k, sd, network), _strip(weights, "gen."), network)
    students = []
    for i, net_cfg in enumerate(cfg["router"]["networks"]):
        gen = build_network(net_cfg, shape, k, sd, network)
        students.append(_with_weights(gen, _strip(weights, f"students.{i}."), network))
    return ClassRouter(students, cfg["router"]["owner"])
