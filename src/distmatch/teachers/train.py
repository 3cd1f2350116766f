"""`distmatch teacher`: train an EDM teacher on data, or (for Gaussian-mixture presets) take the exact one.

An exact teacher still gets a network: one fitted to the closed-form denoiser, which students and critics are
initialised from (DMD2 starts both from the teacher's weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import config as config_mod
from ..data import Dataset, load_data
from ..errors import UserError
from ..networks import NetworkConfig, build_denoiser, resolve_kind
from ..training.teacher import TeacherTraining
from ..training.method import model_writer
from ..training.trainer import TrainConfig, train


@dataclass
class TeacherConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sigma_data: float = 0.5            # EDM's σ_data: the data's std after normalisation
    p_mean: float = -1.2               # log-normal training noise levels (EDM): mean of ln σ ...
    p_std: float = 1.2                 # ... and its std
    conditional: str = "auto"          # auto: class-conditional when the data have labels | yes | no
    label_dropout: float = 0.1         # share of labels replaced by "no class" (classifier-free guidance)
    solver: str = "heun"               # heun | euler
    sample_steps: int = 0              # the teacher's recommended solver steps (0: 40 for vectors, 18 for images)
    exact: str = "auto"                # auto: closed-form denoiser for Gaussian-mixture presets | no

    def validate(self):
        if self.conditional not in ("auto", "yes", "no"):
            raise UserError(f"config key 'conditional' must be auto, yes or no, got {self.conditional!r}")
        if self.solver not in ("heun", "euler"):
            raise UserError(f"config key 'solver' must be heun or euler, got {self.solver!r}")
        if self.exact not in ("auto", "no"):
            raise UserError(f"config key 'exact' must be auto or no, got {self.exact!r}")
        for key, bad, rule in (("sample_steps", self.sample_steps < 0, ">= 0"),
                               ("label_dropout", not 0 <= self.label_dropout < 1, "in [0, 1)"),
                               ("sigma_data", self.sigma_data <= 0, "> 0"), ("p_std", self.p_std <= 0, "> 0")):
            if bad:
                raise UserError(f"config key '{key}' must be {rule}, got {getattr(self, key)}")


# Defaults that depend on the kind of data (applied before the config file and --set overrides).
VECTOR_DEFAULTS = {"train": {"iters": 3000, "batch_size": 1024, "lr": 1e-3, "ema": 0.995, "warmup": 100}}
EXACT_FIT_DEFAULTS = {"train": {"iters": 1000, "batch_size": 1024, "lr": 1e-3, "ema": 0.99, "warmup": 100},
                      "p_std": 1.8}
IMAGE_DEFAULTS = {"train": {"iters": 4000, "batch_size": 128, "lr": 1e-3, "ema": 0.999, "warmup": 200}}


def resolve_teacher_config(data: Dataset, file: str | None, overrides: list[str]) -> TeacherConfig:
    exact_possible = data.mixture is not None
    probe = config_mod.resolve(TeacherConfig, file, overrides)  # validates keys before anything runs
    use_exact = exact_possible and probe.exact == "auto"
    base = VECTOR_DEFAULTS if data.spec.kind == "vector" else IMAGE_DEFAULTS
    if use_exact:
        base = EXACT_FIT_DEFAULTS
    cfg = config_mod.resolve(TeacherConfig, file, overrides, base=base)
    if cfg.sample_steps == 0:
        cfg.sample_steps = 40 if data.spec.kind == "vector" else 18
    resolve_kind(cfg.network.kind, data.spec.shape)
    return cfg


def conditional_classes(cfg: TeacherConfig, data: Dataset) -> int:
    k = data.spec.num_classes if data.labels is not None else 0
    if cfg.conditional == "yes" and k == 0:
        raise UserError("conditional=yes but the data have no labels")
    return k if cfg.conditional in ("auto", "yes") else 0


def class_weights(data: Dataset, k: int) -> list[float]:
    if not k:
        return []
    counts = torch.bincount(data.labels, minlength=k).double()
    return (counts / counts.sum()).tolist()


def train_teacher(data_source: str, out: str | Path, config_file: str | None = None,
                  overrides: list[str] | None = None) -> Path:
    out = Path(out)
    data = load_data(data_source)
    cfg = resolve_teacher_config(data, config_file, overrides or [])
    k = conditional_classes(cfg, data)
    if k == 0:
        data = Dataset(data.x, None, data.spec, data.mixture)
    exact = data.mixture if (data.mixture is not None and cfg.exact == "auto") else None
    # A labelled mixture conditions exactly (cond keeps that class's components; the null label keeps all), so
    # its fitted network is class-conditional with label dropout like any conditional teacher.
    if exact is not None and k and exact.num_classes != k:
        raise UserError(f"the mixture's components carry {exact.num_classes} class labels but the data have {k} "
                        "classes; use --set exact=no")
    net_cfg = config_mod.to_dict(cfg.network)
    net_cfg["kind"] = resolve_kind(net_cfg["kind"], data.spec.shape)
    run_config = {"command": "teacher", "data": data.spec.to_dict(), "config": config_mod.to_dict(cfg)}

    def build(ctx):
        net = build_denoiser(net_cfg, data.spec.shape, k, cfg.sigma_data)
        return TeacherTraining(ctx, net, cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.label_dropout, exact)

    model_cfg = {"kind": "teacher", "teacher": "gmm" if exact is not None else "network",
                 "spec": data.spec.to_dict(), "network": net_cfg, "num_classes": k,
                 "class_weights": class_weights(data, k), "sigma_data": cfg.sigma_data,
                 "solver": cfg.solver, "sample_steps": cfg.sample_steps}
    if exact is not None:
        model_cfg["mixture"] = exact.config()

    def as_teacher(m, it: int):  # the network being trained (for an exact teacher: the one fitted to it)
        from ..models import LoadedModel

        if it == 0:  # an untrained network's noise: nothing to look at
            return None
        return LoadedModel("teacher", {**model_cfg, "teacher": "network"}, data.spec, m.sampler(),
                           class_weights=model_cfg["class_weights"])

    save = model_writer(model_cfg, prefix="net.")
    if exact is not None and cfg.train.eval_every:
        raise UserError("train.eval_every scores a trained network; this teacher is the exact mixture itself "
                        "(--set exact=no trains a network on its samples)")
    desc = "fitting a network to the exact teacher" if exact is not None else "training teacher"
    method = train(out, run_config, cfg.train, data, build, desc, preview=as_teacher, save=save)
    if method.ctx.accelerator.is_main_process:
        save(method, out)
    method.ctx.accelerator.wait_for_everyone()
    return out
