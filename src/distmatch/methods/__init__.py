"""`distmatch distill`: one entry point for every method of the family, all through the one trainer.

Each method lives in its own module with an `Options` dataclass (its `--set METHOD.key=value` options) and a
Method class; this module assembles the config, loads the teacher and data, runs the trainer and exports.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import sys
from dataclasses import field
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import config as config_mod
from ..data import Dataset, dataset_fingerprint, in_value_range, is_preset, load_data
from ..data.arrays import CHANNEL_COUNTS
from ..errors import UserError
from ..models import LoadedModel, load_model
from ..training.method import model_writer
from ..training.trainer import TrainConfig, read_checkpoint_iteration, train
from .student import StudentConfig, student_network_config
from .pairs import teacher_fingerprint
from .recipes import get_recipe, recipe_settings

# name -> (module, one-line description)
METHODS = {
    "dmd2": ("dmd2", "DM gradient + two time-scale critic + GAN on real data; K-step by backward simulation"),
    "dmd": ("dmd", "DM gradient + regression on the teacher's noise->sample pairs"),
    "fdistill": ("fdistill", "DM gradient weighted by an f-divergence h(r), r from the discriminator"),
    "tdm": ("tdm", "data-free few-step trajectory distribution matching (sampling-steps-aware)"),
    "msd": ("msd", "several students, each owning a partition of the classes, behind a router"),
}

# Training settings per kind of data (chosen by the sweeps in bench/): every method runs as
# published; these choose batch, rate, EMA and a K-step student's noise levels, not the losses.
VECTOR_DEFAULTS = {"train": {"iters": 4000, "batch_size": 1024, "lr": 2e-4, "betas": [0.0, 0.999], "ema": 0.99,
                             "ckpt_every": 500},
                   "student": {"sigma_top": 2.0, "sigma_last": 0.15}}
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


def defaults_for(name: str, kind: str, steps: int = 1, recipe: str | None = None, latent: bool = False) -> dict:
    """The defaults of a method for a data kind: the kind's, the method's for the kind (its DEFAULTS[kind]), the
    method's for every few-step student of the kind (DEFAULTS[f"{kind}:K"], K > 1) and for K-step students of the
    kind (DEFAULTS[f"{kind}:{K}"]), each over the ones before; then a recipe's settings, in the same order (`latent`:
    for a latent model's student)."""
    base = VECTOR_DEFAULTS if kind == "vector" else IMAGE_DEFAULTS
    own = getattr(method_module(name), "DEFAULTS", {})
    layers = [own.get(kind, {}), own.get(f"{kind}:K", {}) if steps > 1 else {}, own.get(f"{kind}:{steps}", {})]
    if recipe is not None:
        layers += recipe_settings(recipe, kind, steps, latent)
    merged = {k: dict(v) for k, v in base.items()}
    for extra in layers:
        for section, values in extra.items():
            merged.setdefault(section, {}).update(values)
    return merged


def method_and_recipe(method: str | None, recipe: str | None) -> tuple[str, str | None]:
    """--method and --recipe together: a recipe names its method; a different --method beside it is refused."""
    if recipe is None:
        return method or "dmd2", None
    own = get_recipe(recipe).method
    if method is not None and method != own:
        raise UserError(f"recipe '{recipe}' is a recipe of {own}, not of {method}; drop --method or pick another")
    return own, recipe


def load_teacher(teacher_dir: str | Path) -> LoadedModel:
    """A distmatch teacher run folder, or a diffusers model folder."""
    from ..teachers.diffusers_folder import is_diffusers_folder, load_diffusers_teacher, refuse_component

    path = Path(teacher_dir)
    if not path.exists():
        raise UserError(f"no such teacher folder: {teacher_dir}")
    if is_diffusers_folder(path):
        model = load_diffusers_teacher(path)
        if model.kind != "teacher":
            raise UserError(f"{teacher_dir} is a student that distmatch exported, not a teacher")
        return model
    refuse_component(path)
    if not (path / ckpt.CONFIG).is_file() and (path / ckpt.CHECKPOINT).is_file():
        raise UserError(f"{teacher_dir} holds an unfinished run (checkpoint at iteration "
                        f"{read_checkpoint_iteration(path)}); re-run the command that made it to finish it")
    if not (path / ckpt.CONFIG).is_file():
        raise UserError(f"{teacher_dir} is neither a distmatch teacher (no {ckpt.CONFIG}) nor a diffusers model (no "
                        "model_index.json, nor unet/ and scheduler/); train one with `distmatch teacher`")
    model = load_model(path)
    if model.kind != "teacher":
        raise UserError(f"{teacher_dir} holds a {model.kind}, not a teacher")
    return model


def as_teacher(teacher) -> LoadedModel:
    """A teacher folder loaded, or a model given in Python, refused when it is a student."""
    model = teacher if isinstance(teacher, LoadedModel) else load_teacher(teacher)
    if model.kind != "teacher":
        raise UserError(f"the teacher given is a {model.kind}, not a teacher: distil a teacher (a run of `distmatch "
                        "teacher`, a diffusers model folder or a network from wrap_teacher)")
    return model.in_eval_mode()


def teacher_id(teacher: LoadedModel) -> str:
    """How a run names its teacher: its folder, or for a teacher built in Python a fingerprint of its weights."""
    return str(teacher.path.resolve()) if teacher.path is not None else f"in-memory:{teacher_fingerprint(teacher)}"


def recorded_fingerprint(teacher: LoadedModel, out: Path) -> str:
    """The teacher's fingerprint; a run begun when it held the teacher folder's path keeps the one it recorded, so
    that it resumes."""
    fingerprint = teacher_fingerprint(teacher)
    try:
        recorded = json.loads((out / "run.json").read_text()).get("teacher_weights")
    except (OSError, ValueError, AttributeError):
        return fingerprint
    legacy = "folder" in teacher.config and recorded == teacher_fingerprint(teacher, with_folder=True)
    return recorded if legacy else fingerprint


def distill_data(teacher: LoadedModel, data_source: str | None, needs_data: bool, method: str) -> Dataset | None:
    source = data_source or teacher.spec.source
    if not needs_data and data_source is None:
        return None
    if teacher.spec.kind == "image" and teacher.spec.shape[0] not in CHANNEL_COUNTS:
        raise UserError(f"the teacher makes images of {teacher.spec.shape[0]} channels and distmatch reads image data "
                        f"of 1, 3 or 4: distil it data-free (--method tdm, or dmd2.gan=false without data)")
    if not source:
        raise UserError(f"{method} with these settings uses real data (a GAN, a regression at noisy data or msd's "
                        "k-means over class means) "
                        "and this teacher carries none: give the data (--data / data=)")
    if not teacher.spec.source and teacher.spec.kind == "image":
        # a teacher built in Python works on [-1, 1] images: the data keep their own value range, mapped there
        data = load_data(source)
        if data.spec.kind != "image":
            raise UserError(f"data '{source}' are vectors of dimension {data.spec.shape[0]}, but the teacher makes "
                            f"images of shape {tuple(teacher.spec.shape)} (channels, height, width)")
        if tuple(data.spec.shape) != tuple(teacher.spec.shape):
            raise UserError(f"data '{source}' hold images of shape {data.spec.sample_shape}, read as "
                            f"{tuple(data.spec.shape)} (channels, height, width), but the teacher makes "
                            f"{tuple(teacher.spec.shape)}")
        if teacher.spec.range_fixed:
            data = in_value_range(data, teacher.spec.value_range, source)
        if teacher.num_classes and data.labels is not None:
            data = as_teachers_classes(data, teacher.num_classes, source)
    else:
        check_teachers_data_unchanged(teacher, data_source)
        data = load_data(source, spec=teacher.spec)
        if not teacher.spec.source:  # a vector teacher built in Python: samples come back in the data's dtype
            data = dataclasses.replace(data, spec=dataclasses.replace(data.spec, dtype=load_data(source).spec.dtype))
            check_spread(teacher, data, source)
    if teacher.num_classes and data.labels is None:
        raise UserError(f"the teacher is class-conditional but data '{source}' have no labels")
    if not teacher.num_classes and data.labels is not None:
        said = data_source is None or Path(data_source).name == ckpt.DATA  # the teacher's own, or labels= said it
        if not said and os.environ.get("RANK", "0") == "0":  # one line from a launch of N processes, not N
            print(f"warning: data '{data_source}' carry class labels, which an unconditional teacher does not use",
                  file=sys.stderr)
        data = Dataset(data.x, None, data.spec, data.mixture)
    return data


def check_spread(teacher: LoadedModel, data: Dataset, source: str) -> None:
    """A σ-space network wrapped in Python sees its data raw, at the sigma_data it was wrapped with: data ten times
    wider or narrower were not what its noise levels were made for, and are said."""
    sd, spread = teacher.config.get("sigma_data", 0.5), float(data.x.std())
    if getattr(teacher.denoiser, "convention", None) == "edm" and not sd / 10 <= spread <= sd * 10:
        print(f"warning: data '{source}' have std {spread:.3g}, where the teacher was wrapped for data of spread "
              f"sigma_data = {sd:g}: give wrap_teacher the sigma_data (and sigma_max) your network was trained at",
              file=sys.stderr)


def encoded(teacher: LoadedModel, data: Dataset | None, progress: bool) -> Dataset | None:
    """The data as the teacher's network sees them: a latent model's images encoded by its autoencoder."""
    from accelerate import PartialState

    if data is None or teacher.codec is None:
        return data
    # this process's accelerator (a large autoencoder is slow on a CPU), its state made as make_accelerator makes it
    teacher.codec.to(PartialState(cpu=not torch.cuda.is_available()).device)
    return dataclasses.replace(data, x=teacher.codec.encode(data.x, progress=progress))


def codec_weights(teacher: LoadedModel) -> dict[str, torch.Tensor]:
    """A latent teacher's autoencoder weights, saved with its student's so the student folder decodes alone."""
    from ..models import CODEC_PREFIX

    if teacher.codec is None:
        return {}
    return {CODEC_PREFIX + k: v for k, v in teacher.codec.vae.state_dict().items()}


def check_teachers_data_unchanged(teacher: LoadedModel, data_source: str | None) -> None:
    """Distilled on the teacher's own data file (no --data), that file must still hold what the teacher learnt."""
    source, known = teacher.spec.source, getattr(teacher.spec, "fingerprint", None)
    if data_source is not None or not source or is_preset(source) or not known:
        return
    if not Path(source).exists():
        raise UserError(f"the teacher's data '{source}' are gone: give the data to distil on (--data)")
    if load_data(source).spec.fingerprint != known:
        raise UserError(f"the teacher's data '{source}' have changed since it was trained: give the data to distil "
                        "on (--data)")


def predicts(teacher: LoadedModel) -> str:
    """What the teacher's network predicts, in words for a refusal."""
    return getattr(teacher.denoiser, "prediction", None) or (
        "the velocity (flow matching)" if getattr(teacher.denoiser, "convention", "") == "flow" else "x̂_0 (EDM)")


def check_applies(teacher: LoadedModel, cfg, method: str, defaults: dict, epsilon: bool = False) -> None:
    """Settings that this teacher cannot honour are refused, not run as if absent (a method's own default aside)."""
    check_null_label(teacher, getattr(getattr(cfg, method), "guidance", 1.0), method)
    if teacher.init_net is not None and next(teacher.init_net.parameters(), None) is None:
        raise UserError("the teacher's network has no parameters: its students and critics are trained as copies "
                        "of it (an analytic denoiser can be sampled and evaluated, not distilled)")
    own = defaults.get("student", {})
    start = cfg.student.start_sigma_max
    if not epsilon and start not in (0.0, own.get("start_sigma_max", StudentConfig.start_sigma_max)):
        raise UserError(f"student.start_sigma_max caps the start of an ε- or score-predicting teacher's student; this "
                        f"teacher predicts {predicts(teacher)}, and its student starts at its top level")
    if cfg.student.flow_terminal not in (0.0, own.get("flow_terminal", 0.0)) and teacher.schedule.kind != "flow":
        raise UserError("student.flow_terminal places a flow teacher's last level; this teacher is not a flow model")
    given = [k for k in ("sigma_top", "sigma_last")
             if getattr(cfg.student, k) != own.get(k, getattr(StudentConfig, k))]  # set by the user
    if given and cfg.student.steps == 1:  # a sweep over K may set them for every K: said, not refused
        print(f"warning: student.{given[0]} places the levels after a K-step student's first; a 1-step student has "
              "only its first (student.start_sigma_max moves an ε teacher's)", file=sys.stderr)
    if given and cfg.student.steps > 1 and teacher.schedule.kind != "ve":
        raise UserError(f"student.{given[0]} places a K-step student's levels on a σ-space teacher; this teacher's are "
                        "the timesteps its scheduler runs: give them as student.timesteps (or student.sigmas)")
    off = teacher.schedule.off_timesteps(cfg.student.sigmas or [])
    if off:  # trained and sampled as given; export is what cannot follow
        print(f"warning: student.sigmas {[round(v, 4) for v in off]} lie between the teacher's training "
              "timesteps: the student samples through distmatch, but its export to diffusers, whose schedulers "
              "run whole timesteps, will be refused (student.timesteps gives whole ones)", file=sys.stderr)
    if cfg.student.fourier_cap and getattr(getattr(teacher.init_net, "backbone", None), "fourier", None) is None:
        raise UserError("student.fourier_cap limits the Fourier features of distmatch's vector networks; this "
                        "teacher's network has none")


def check_null_label(teacher: LoadedModel, guidance: float, method: str) -> None:
    """Classifier-free guidance runs the teacher with its "no class" label, num_classes: refused in one line for a
    network that has none (a UNet2DModel's class table holds only its classes), and for a teacher without classes."""
    if guidance == 1.0:
        return
    if not teacher.num_classes:
        raise UserError(f"{method}.guidance={guidance:g} is classifier-free guidance over the teacher's classes, and "
                        "this teacher is unconditional: leave the guidance at 1")
    x = torch.zeros((1, *teacher.shape), device=teacher.device)
    try:
        with torch.no_grad():
            teacher.denoiser(x, torch.ones(1, device=x.device), torch.full((1,), teacher.num_classes, device=x.device))
    except (IndexError, RuntimeError) as e:
        raise UserError(f"{method}.guidance={guidance:g} runs the teacher without a class (label "
                        f"{teacher.num_classes}), which its network does not take ({str(e).splitlines()[0][:60]}): "
                        "it was not trained for classifier-free guidance; leave the guidance at 1") from None


def level_scale(teacher: LoadedModel) -> float:
    """student.sigma_top / sigma_last are for data of std 0.5, as distmatch normalises them; a σ-space network
    wrapped in Python sees its data raw, at the sigma_data it was wrapped with."""
    edm = getattr(teacher.denoiser, "convention", None) == "edm"
    return teacher.config.get("sigma_data", 0.5) / 0.5 if edm else 1.0


def scoring_data(teacher: LoadedModel, data_source: str | None, method: str) -> Dataset:
    """The data `train.eval_every` scores a data-free student against: the user's, else the teacher's own."""
    if not (data_source or teacher.spec.source):
        raise UserError("train.eval_every scores the student against real data, and this teacher carries none: give "
                        "the data (--data / data=)")
    return distill_data(teacher, data_source, True, method)


def distill_data_fingerprint(data: Dataset | None) -> str | None:
    """What a resumed run must train on again: these data as the teacher sees them (None: data-free)."""
    return None if data is None else dataset_fingerprint(data)


def as_teachers_classes(data: Dataset, classes: int, source: str) -> Dataset:
    """A foreign class-conditional teacher numbers its classes 0..C-1: the data's labels are those numbers (a
    data set holding classes 1 and 2 only must not become classes 0 and 1)."""
    names = data.spec.class_names
    number = [int(n) if str(n).strip().lstrip("-").isdigit() else None for n in names]
    if bad := [n for n, i in zip(names, number) if i is None or not 0 <= i < classes]:
        raise UserError(f"data '{source}' carry labels {', '.join(map(repr, bad[:3]))}, but the teacher's classes "
                        f"are the numbers 0..{classes - 1}: name the class sub-folders (or labels) by the teacher's "
                        "class numbers")
    labels = torch.tensor(number)[data.labels]
    return Dataset(data.x, labels, dataclasses.replace(data.spec, class_names=list(range(classes))), data.mixture)


def check_settings(method: str | None, kind: str, steps: int, overrides: list[str], recipe: str | None = None
                   ) -> None:
    """A distillation's settings resolved and checked for a kind of data, before a teacher exists (demo and compare
    train one first: a typo must not wait for it)."""
    method, recipe = method_and_recipe(method, recipe)
    config_mod.resolve(config_class(method), None, [*overrides, f"student.steps={steps}"],
                       base=defaults_for(method, kind, steps, recipe))


def run_distill(teacher: str | Path | LoadedModel, out: str | Path, method: str | None = None,
                steps: int | None = None, config_file: str | None = None, overrides: list[str] | None = None,
                data_source: str | None = None, recipe: str | None = None) -> Path:
    """Distil `teacher` (a run folder, or a teacher built in Python) into a student in the run folder `out`."""
    out = Path(out)
    method, recipe = method_and_recipe(method, recipe)
    module = method_module(method)
    teacher = as_teacher(teacher)
    overrides = list(overrides or [])
    if steps is not None:
        said = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "student.steps"]
        if said and said[-1] != str(steps):
            raise UserError(f"--steps {steps} (steps=) and student.steps={said[-1]} disagree: give the steps once")
        overrides.append(f"student.steps={steps}")
    cls, kind = config_class(method), teacher.spec.kind
    steps = config_mod.resolve(cls, config_file, overrides, base=defaults_for(method, kind)).student.steps
    defaults = defaults_for(method, kind, steps, recipe, latent=teacher.codec is not None)
    cfg = config_mod.resolve(cls, config_file, overrides, base=defaults)
    data = distill_data(teacher, data_source, module.Method.needs_data(cfg), method)
    scored = data if data is not None or not cfg.train.eval_every else scoring_data(teacher, data_source, method)
    # its x̂_0 amplifies ε̂'s error (a score network's -ε̂/σ too)
    epsilon = getattr(teacher.denoiser, "prediction", None) in ("epsilon", "score")
    if recipe is not None and get_recipe(recipe).epsilon_only and not epsilon:
        raise UserError(f"recipe '{recipe}' moves the start of an ε-predicting teacher's student; this teacher "
                        f"predicts {predicts(teacher)}: use --method {method}")
    sigmas = cfg.student.resolved_sigmas(teacher.schedule, epsilon, level_scale(teacher))
    check_applies(teacher, cfg, method, defaults, epsilon)
    run_config = {"command": "distill", "method": method, "recipe": recipe, "teacher": teacher_id(teacher),
                  "teacher_weights": recorded_fingerprint(teacher, out), "distill_data": distill_data_fingerprint(data),
                  "data": teacher.spec.to_dict(), "config": config_mod.to_dict(cfg), "levels": sigmas,
                  "k_step": {k: getattr(cfg.student, k) for k in ("backsim", "critic_per_step", "first_only")}
                  if len(sigmas) > 1 else {}}
    spec = data.spec if data is not None and not teacher.spec.source else teacher.spec  # samples as the data
    data = encoded(teacher, data, cfg.train.progress)
    model_cfg = {"kind": "student", "method": method, "recipe": recipe, "spec": spec.to_dict(),
                 "network": student_network_config(teacher.config["network"], cfg.student),
                 "num_classes": teacher.num_classes,
                 "class_weights": teacher.class_weights, "sigma_data": teacher.config.get("sigma_data", 0.5),
                 "sigmas": sigmas, "steps": len(sigmas), "move": getattr(getattr(cfg, method), "move", "renoise"),
                 "teacher_dir": teacher_id(teacher),
                 "schedule": teacher.schedule.config(),
                 "teacher_nfe": teacher.nfe()}
    if aliases := teacher.config.get("class_aliases"):  # the teacher pipeline's class names stay the student's
        model_cfg["class_aliases"] = aliases
    if teacher.codec is not None:  # a latent student keeps its teacher's autoencoder
        model_cfg.update(latent_shape=list(teacher.shape), codec=teacher.codec.config())

    def as_student(m, it: int) -> LoadedModel:  # the student being trained, as `sample` will load it
        return LoadedModel("student", model_cfg, spec, m.sampler(), class_weights=teacher.class_weights,
                           codec=teacher.codec)

    save = model_writer(model_cfg, extra=codec_weights(teacher))
    given = {"data": data} if "data" in inspect.signature(module.Method.__init__).parameters else {}  # msd's k-means
    result = train(out, run_config, cfg.train, data, lambda ctx: module.Method(ctx, teacher, cfg, sigmas, **given),
                   f"distilling ({method}, {len(sigmas)}-step)", preview=as_student, save=save, eval_data=scored)
    if result.ctx.accelerator.is_main_process:
        save(result, out)
    result.ctx.accelerator.wait_for_everyone()
    return out
