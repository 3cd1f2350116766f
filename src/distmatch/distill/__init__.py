"""`distmatch distill`: one entry point for every method of the family, all through the one trainer.

Each method lives in its own module with an `Options` dataclass (its `--set METHOD.key=value` options) and a
Method class; this module assembles the config, loads the teacher and data, runs the trainer and exports.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import field
from pathlib import Path

from .. import checkpoint as ckpt
from .. import config as config_mod
from ..data import Dataset, load_data
from ..errors import UserError
from ..models import LoadedModel, load_model
from ..training.trainer import TrainConfig, train
from .common import StudentConfig, student_network_config

# name -> (module, one-line description)
METHODS = {
    "dmd2": ("dmd2", "DM gradient + two time-scale critic + GAN on real data; K-step by backward simulation"),
    "dmd": ("dmd", "DM gradient + regression on the teacher's noise->sample pairs"),
    "fdistill": ("fdistill", "DM gradient weighted by an f-divergence h(r), r from the discriminator"),
    "tdm": ("tdm", "data-free few-step trajectory distribution matching (sampling-steps-aware)"),
    "msd": ("msd", "several students, each owning a partition of the classes, behind a router"),
}

# Vector defaults from bench/sweep_2d.py (bench/RESULTS.md): batch 1024 gave the best students per iteration,
# EMA 0.999 lagged far behind 0.99, beta1 0 beat 0.9 up to 5000 iterations. lr 2e-4 for student and critic
# (3e-4 was worse on 25 Gaussians; a faster student alone was worse on 8 Gaussians): 1-step SWD at 4000 iterations
# on the swiss roll 0.0358 -> 0.0208 and on a user's 8-D mixture -20%; on 8 Gaussians within seed noise,
# checkerboard and 25 Gaussians slightly worse. A modest net gain, one seed per figure (bench/RESULTS.md).
# K-step students on vectors re-noise between steps at low levels (geometric 2.0 -> 0.15: K=4 gives 80, 0.84, 0.36,
# 0.15): on 8 Gaussians the 4-step SWD fell from 0.0251 (levels 2.58/0.95/0.35) to 0.0161, on moons from 0.104 to
# 0.049; and they keep one critic per step: 4-step SWD on moons 0.047 -> 0.020, on 25 Gaussians 0.093 (28% of the
# modes lost) -> 0.022 (all modes), on 8 Gaussians 0.0166 -> 0.0186 (bench/RESULTS.md). Images keep DMD2's higher
# levels and one critic (digits: 4-step FD 0.89x the teacher's; K critics would cost K U-Nets of memory).
VECTOR_DEFAULTS = {"train": {"iters": 4000, "batch_size": 1024, "lr": 2e-4, "betas": [0.0, 0.999], "ema": 0.99,
                             "ckpt_every": 500},
                   "student": {"sigma_top": 2.0, "sigma_last": 0.15, "critic_per_step": True}}
# Image defaults checked on digits (bench/RESULTS.md): 2000 iterations at lr 1e-4 reach ~1.05x the teacher's FD.
IMAGE_DEFAULTS = {"train": {"iters": 2000, "batch_size": 64, "lr": 1e-4, "betas": [0.9, 0.999], "ema": 0.99,
                            "ckpt_every": 500}}


def method_module(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (choose one of {', '.join(METHODS)})")
    return importlib.import_module(f"{__name__}.{METHODS[name][0]}")


def config_class(name: str):
    """The config of one method: train.*, student.*, and the method's own section."""
    module = method_module(name)
    return dataclasses.make_dataclass(f"{name.upper()}Config", [
        ("train", TrainConfig, field(default_factory=TrainConfig)),
        ("student", StudentConfig, field(default_factory=StudentConfig)),
        (name, module.Options, field(default_factory=module.Options)),
    ])


def defaults_for(name: str, kind: str, steps: int = 1) -> dict:
    """The defaults of a method for a data kind: the kind's, the method's for the kind (its DEFAULTS[kind]), the
    method's for every few-step student of the kind (DEFAULTS[f"{kind}:K"], K > 1) and for K-step students of the
    kind (DEFAULTS[f"{kind}:{K}"]), each over the ones before."""
    base = VECTOR_DEFAULTS if kind == "vector" else IMAGE_DEFAULTS
    own = getattr(method_module(name), "DEFAULTS", {})
    merged = {k: dict(v) for k, v in base.items()}
    for extra in (own.get(kind, {}), own.get(f"{kind}:K", {}) if steps > 1 else {}, own.get(f"{kind}:{steps}", {})):
        for section, values in extra.items():
            merged.setdefault(section, {}).update(values)
    return merged


def load_teacher(teacher_dir: str | Path) -> LoadedModel:
    path = Path(teacher_dir)
    if not path.exists():
        raise UserError(f"no such teacher folder: {teacher_dir}")
    if not (path / ckpt.CONFIG).is_file():
        raise UserError(f"{teacher_dir} holds no teacher (no {ckpt.CONFIG}); train one with `distmatch teacher`")
    model = load_model(path)
    if model.kind != "teacher":
        raise UserError(f"{teacher_dir} holds a {model.kind}, not a teacher")
    return model


def distill_data(teacher: LoadedModel, data_source: str | None, needs_data: bool) -> Dataset | None:
    source = data_source or teacher.spec.source
    if not needs_data and data_source is None:
        return None
    data = load_data(source, spec=teacher.spec)
    if teacher.num_classes and data.labels is None:
        raise UserError(f"the teacher is class-conditional but data '{source}' have no labels")
    if not teacher.num_classes:
        data = Dataset(data.x, None, data.spec, data.mixture)
    return data


def run_distill(teacher_dir: str | Path, out: str | Path, method: str = "dmd2", steps: int | None = None,
                config_file: str | None = None, overrides: list[str] | None = None,
                data_source: str | None = None) -> Path:
    out = Path(out)
    module = method_module(method)
    teacher = load_teacher(teacher_dir)
    overrides = list(overrides or [])
    if steps is not None:
        overrides.append(f"student.steps={steps}")
    cls, kind = config_class(method), teacher.spec.kind
    steps = config_mod.resolve(cls, config_file, overrides, base=defaults_for(method, kind)).student.steps
    cfg = config_mod.resolve(cls, config_file, overrides, base=defaults_for(method, kind, steps))
    data = distill_data(teacher, data_source, module.Method.needs_data(cfg))
    sigmas = cfg.student.resolved_sigmas()
    run_config = {"command": "distill", "method": method, "teacher": str(Path(teacher_dir).resolve()),
                  "data": teacher.spec.to_dict(), "config": config_mod.to_dict(cfg), "levels": sigmas,
                  "k_step": {k: getattr(cfg.student, k) for k in ("backsim", "critic_per_step", "first_only")}
                  if len(sigmas) > 1 else {}}
    result = train(out, run_config, cfg.train, data, lambda ctx: module.Method(ctx, teacher, cfg, sigmas),
                   f"distilling ({method}, {len(sigmas)}-step)")
    if result.ctx.accelerator.is_main_process:
        weights, extra = result.export()
        model_cfg = {"kind": "student", "method": method, "spec": teacher.spec.to_dict(),
                     "network": student_network_config(teacher.config["network"], cfg.student),
                     "num_classes": teacher.num_classes,
                     "class_weights": teacher.class_weights, "sigma_data": teacher.config.get("sigma_data", 0.5),
                     "sigmas": sigmas, "steps": len(sigmas), "teacher_dir": str(Path(teacher_dir).resolve()),
                     "teacher_nfe": teacher.nfe()}
        model_cfg.update(extra)
        ckpt.save_model(out, weights, model_cfg)
    result.ctx.accelerator.wait_for_everyone()
    return out
