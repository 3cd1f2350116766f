"""`distmatch export`: a student as a folder that stock diffusers loads with DiffusionPipeline.from_pretrained.

A student of a diffusers UNet2DModel teacher exports as a DDPMPipeline: its UNet (the teacher's class and
parameterisation, the student's weights) and a scheduler that runs exactly the student's K trained levels, so
`pipe(num_inference_steps=K)` runs the student (x̂_0 at each level, re-noised to the next): for a DDPM-family
teacher an LCMScheduler with `original_inference_steps=K`, for a flow teacher FlowMatchEulerDiscreteScheduler
with `stochastic_sampling=True`. A student that moves DDIM-like between its steps (tdm) gets a DDIMScheduler
(η = 0) or the flow scheduler's deterministic Euler step instead. The same seed gives the same images as
`distmatch sample --seed` at K steps (at fewer, distmatch stops after the first k of the K levels and the
scheduler picks its own k). A class-conditional student keeps that network and scheduler with a pipeline.py that
passes labels, and a latent one with its autoencoder (vae/) and a pipeline.py that decodes (export_classes.py). A
student of distmatch's own U-Net exports with its code in the folder instead (export_own.py), loaded with
`trust_remote_code=True`. The distillation's record goes into model_index.json under
"_distmatch" (diffusers ignores keys starting with _) and a model card (README.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import UserError
from .models import LoadedModel, load_model
from .schedules import FLOW_TOP


def lcm_timesteps(num_train: int, steps: int) -> list[int]:
    """The timesteps LCMScheduler runs for K steps when original_inference_steps = K: (i+1)·(T//K) - 1, falling."""
    c = num_train // steps
    return [(i + 1) * c - 1 for i in reversed(range(steps))]


def betas_from(alphas_cumprod: torch.Tensor) -> list[float]:
    a = alphas_cumprod.double()
    return (1 - torch.cat([a[:1], a[1:] / a[:-1]])).tolist()


def check_exportable(model: LoadedModel) -> None:
    net = model.config.get("network", {})
    if model.kind != "student":
        raise UserError(f"{model.path} holds a {model.kind}; export takes a distilled student")
    if net.get("kind") == "unet":
        return  # distmatch's own U-Net: the folder carries its code (export_own)
    if net.get("convention") == "score":
        raise UserError(f"{model.path}: no stock diffusers scheduler runs a score (VE) model's few steps; sample the "
                        "student with distmatch (distmatch sample, distmatch.load)")
    if net.get("convention") == "precond":  # DDPMPipeline and its kin do not scale the network's input (c_in)
        raise UserError(f"{model.path}: no stock diffusers pipeline runs an EDM-preconditioned UNet; sample the "
                        "student with distmatch (distmatch sample, distmatch.load)")
    if net.get("kind") != "diffusers" or net.get("convention") not in ("vp", "flow"):
        raise UserError(f"{model.path}: export writes image students of distmatch's U-Net or of a diffusers UNet "
                        "with a DDPM-family or flow scheduler; this one is neither")


def vp_scheduler(adapter, sigmas: list[float], move: str = "renoise"):
    """An LCMScheduler pinned to the student's K timesteps (original_inference_steps = K), those timesteps, and
    whether the scheduler must be given them (custom levels, student.timesteps: no K-step LCM schedule has them).

    A student that starts below the teacher's top level t_max (student.start_sigma_max) gets the teacher's first
    T = t_0 + 1 training steps: the same ᾱ_t at every t it runs, and LCM's pinned timesteps are then its own."""
    from diffusers import LCMScheduler

    steps = len(sigmas)
    trained = [int(round(float(t))) for t in adapter.timestep(torch.tensor(sigmas))]
    if adapter.schedule().off_timesteps(sigmas):
        raise UserError(f"the student's levels σ = {[round(v, 4) for v in sigmas]} lie between the teacher's training "
                        "timesteps, and a diffusers scheduler runs whole ones: give them as student.timesteps")
    if min(trained) < 1:  # LCM's boundary condition: c_skip = 1 at t = 0, the model's output unused
        raise UserError(f"the student was trained at timesteps {trained}; an LCM scheduler returns its input "
                        "unchanged at timestep 0: distil with fewer steps or levels above 0 to export")
    num_train = min(trained[0] + 1, len(adapter.alphas_cumprod))
    custom = trained != lcm_timesteps(num_train, steps)
    if move == "ddim":
        return ddim_scheduler(adapter, trained, custom), trained, False
    if custom and (trained[0] != num_train - 1 or len(set(trained)) < steps):
        raise UserError(f"the student was trained at timesteps {trained}; an LCM scheduler runs its first at the "
                        "teacher's top level: distil with the default student levels to export")
    # Custom levels: every training timestep is on the schedule (no warning when the pipeline passes them).
    # LCM's boundary condition x̂_0 = c_skip x_t + c_out F is made exact: c_skip < 3e-9 from t = 1.
    scheduler = LCMScheduler(num_train_timesteps=num_train,
                             trained_betas=betas_from(adapter.alphas_cumprod[:num_train]),
                             original_inference_steps=num_train if custom else steps,
                             prediction_type=adapter.prediction, clip_sample=False, timestep_scaling=1e4)
    return scheduler, trained, custom


def ddim_scheduler(adapter, trained: list[int], custom: bool):
    """A DDIMScheduler (η = 0, trailing spacing) on the teacher's first N = K·c timesteps, c = (t_0 + 1) // K: its
    K steps are then the student's timesteps (i+1)·c - 1, each moved to the next by t - c, the last to ᾱ = 1,
    where DDIM's sample is the student's x̂_0."""
    from diffusers import DDIMScheduler

    if custom:
        raise UserError(f"the student was trained at timesteps {trained}, and a DDIM scheduler steps between evenly "
                        "spaced ones: distil with the default student levels to export")
    n = (trained[0] + 1) // len(trained) * len(trained)
    return DDIMScheduler(num_train_timesteps=n, trained_betas=betas_from(adapter.alphas_cumprod[:n]),
                         timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
                         prediction_type=adapter.prediction)


def flow_scheduler(adapter, sigmas: list[float], move: str = "renoise"):
    """A flow scheduler with stochastic sampling (each step's x̂_0 re-noised to the next level, as the student
    was trained; a DDIM-like student: its deterministic Euler step, the same move), whose K levels are the
    student's: the scheduler's own, or (student.flow_terminal) stretched to its last level by `shift_terminal`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if adapter.time_scale != adapter.num_train:  # diffusers' flow schedulers feed the network t = T s
        raise UserError(f"the teacher was wrapped to feed its network t = {adapter.time_scale:g} s, where diffusers' "
                        f"flow schedulers feed t = num_train_timesteps s = {adapter.num_train} s: no stock scheduler "
                        "runs this student; sample it with distmatch (sample, load)")
    steps, last = len(sigmas), sigmas[-1] / (1 + sigmas[-1])
    for terminal in [None] + ([last] if steps > 1 else []):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=adapter.num_train, shift=adapter.shift,
                                                    shift_terminal=terminal,
                                                    stochastic_sampling=move != "ddim")
        scheduler.set_timesteps(steps)
        s = scheduler.sigmas[:-1].double()
        runs = torch.where(s >= 1, torch.full_like(s, FLOW_TOP), s / (1 - s))
        if torch.allclose(torch.tensor(sigmas, dtype=torch.float64), runs, rtol=1e-5):
            return scheduler, [round(float(t), 4) for t in scheduler.timesteps], False
    raise UserError("the student was not trained at the flow scheduler's levels; distil with the default "
                    "student levels to export")


def remove_stale_drafts(out: Path) -> None:
    """Drafts of `out` that a killed export left beside it (.OUT.PID.*, their process gone)."""
    for draft in out.parent.glob(f".{out.name}.*.*"):
        pid = draft.name[len(out.name) + 2:].split(".")[0]
        if draft.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(draft, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def export_student(student_dir: str | Path, out: str | Path) -> Path:
    """Write the student in `student_dir` as a new diffusers folder `out` (written aside, then renamed)."""
    from .models import load_weights

    model = load_model(student_dir)
    check_exportable(model)
    out = Path(out)
    sigmas = model.config["sigmas"]
    record = {"method": model.config["method"], "recipe": model.config.get("recipe"), "steps": len(sigmas),
              "sigmas": sigmas, "move": model.config.get("move", "renoise"), "teacher": model.config.get("teacher_dir"),
              "data": model.spec.source or None, "spec": model.spec.to_dict(),  # samples come back as the data
              "weights": weights_digest(Path(student_dir))}
    if best := model.config.get("best"):  # the best of its run's scores (train.eval_every), not its last
        record["best"] = best
    if model.codec is not None:
        record["autoencoder"] = model.codec.kind
    if out.exists() and any(out.iterdir()):
        if record["weights"] and exported_record(out) == record:
            return out  # it holds this export already: nothing to do
        raise UserError(f"{out} exists and is not empty; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)  # written beside its place, so the rename cannot cross disks
    remove_stale_drafts(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}."))
    try:
        if model.config["network"]["kind"] == "unet":
            from .export_own import export_own_student

            export_own_student(model, load_weights(model.path), tmp, record)
            card = model_card(record, custom="own")
        else:
            custom = write_stock(model, tmp, record, student_dir)
            card = model_card(record, custom=custom)
        ckpt.atomic_write_bytes(tmp / "README.md", card.encode())
        try:
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except OSError:  # another process (every rank of a launched script) placed its export first
            if exported_record(out) != {k: v for k, v in record.items() if k != "timesteps"}:
                raise UserError(f"{out} was written by another process meanwhile; export into a new folder") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def weights_digest(student_dir: Path) -> str | None:
    """The student's weights file's SHA-256 (first 16 hex digits): an export says which weights it holds."""
    path = student_dir / ckpt.MODEL
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def exported_record(folder: Path) -> dict:
    """The distillation record of an export, as export_student made it (before the scheduler's additions)."""
    try:
        stored = json.loads((folder / "model_index.json").read_text()).get("_distmatch", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in stored.items() if k != "timesteps"}


def write_stock(model: LoadedModel, folder: Path, record: dict, student_dir) -> str | None:
    """A DDPMPipeline: the student's UNet and a scheduler that runs its trained levels (a class-conditional
    student, or one trained at levels the scheduler does not pick itself: its network, that scheduler and a
    pipeline that passes labels and timesteps, export_classes). Returns what the folder's own code does for the
    model card: None, "classes" or "timesteps"."""
    from diffusers import DDPMPipeline

    students = list(getattr(model.denoiser, "students", [model.denoiser]))  # msd: several behind a class router
    adapter = students[0]
    make = vp_scheduler if model.config["network"]["convention"] == "vp" else flow_scheduler
    try:
        scheduler, record["timesteps"], custom = make(adapter, record["sigmas"], record["move"])
    except UserError as e:
        raise UserError(f"{student_dir}: {e}") from None
    if model.num_classes or custom or model.codec is not None:
        from .export_classes import export_pipeline_student

        owner = model.config["router"]["owner"] if "router" in model.config else []
        export_pipeline_student(model, [s.net for s in students], scheduler, folder, record, custom, owner)
        return "classes" if model.num_classes else "timesteps" if custom else "latent"
    DDPMPipeline(unet=without_variance(adapter.net), scheduler=scheduler).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    ckpt.atomic_write_json(folder / "model_index.json", {**index, "_distmatch": record})
    return None


def without_variance(unet):
    """A UNet that also learns its variance (2C output channels) as one with its prediction's C channels only:
    the student was trained on those, and LCMScheduler does not split a model's output."""
    c = unet.config
    if c.out_channels != 2 * c.in_channels:
        return unet
    slim = type(unet).from_config({**c, "out_channels": c.in_channels})
    state = unet.state_dict()
    for name in ("conv_out.weight", "conv_out.bias"):
        state[name] = state[name][: c.in_channels]
    slim.load_state_dict(state)
    return slim.eval()


def model_card(record: dict, custom: str | None = None) -> str:
    """The folder's README.md; `custom`: "own" (distmatch's U-Net and sampler in the folder's code), "classes",
    "timesteps" or "latent" (a stock network and scheduler driven by the folder's pipeline.py, which passes class
    labels, or timesteps the scheduler would not pick, or decodes a latent model's samples)."""
    how = record["method"] + (f" (recipe {record['recipe']})" if record.get("recipe") else "")
    sigmas = f"σ = {', '.join(f'{s:.4g}' for s in record['sigmas'])}"
    trained = f"timesteps {record['timesteps']} ({sigmas})" if "timesteps" in record else sigmas
    load = ('DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)' if custom
            else 'DiffusionPipeline.from_pretrained("path/to/this/folder")')
    remote = {None: "", "own": "\nThe network and its sampler are not in diffusers: `pipeline.py` and "
              "`student/distmatch_student.py` hold their code (torch and diffusers only), which is why loading asks "
              "for `trust_remote_code=True`; read them first. Class-conditional students take `class_labels=`.\n",
              "classes": "\nThe network and the scheduler are stock diffusers classes; no stock pixel pipeline passes "
              "class labels, so `pipeline.py` (torch and diffusers only: the scheduler's loop with `class_labels=`) "
              "does, which is why loading asks for `trust_remote_code=True`; read it first. Pass `class_labels=` "
              "(indices or class names); without them labels are drawn as `distmatch sample` draws them: as in the "
              "teacher's training data, or uniformly for a teacher that came without data.\n",
              "timesteps": "\nThe network and the scheduler are stock diffusers classes; the student was trained at "
              "timesteps that no K-step schedule of the scheduler picks itself, so `pipeline.py` (torch and diffusers "
              "only: the scheduler's loop) passes them to it, which is why loading asks for "
              "`trust_remote_code=True`; read it first.\n",
              "latent": "\nThe network, the scheduler and the autoencoder are stock diffusers classes; no stock "
              "latent pipeline hands its generator to the scheduler's steps, so the same seed would not give the same "
              "images: `pipeline.py` (torch and diffusers only: the scheduler's loop, then the autoencoder's decoding) "
              "runs it, which is why loading asks for `trust_remote_code=True`; read it first.\n"}[custom]
    if record["method"] == "msd":
        where = ("`student/` holds a U-Net per group of classes and sends each class to the one that owns it "
                 "(`owner` in `student/config.json`)" if custom == "own" else "one network per group of classes "
                 "(`unet_0`, `unet_1`, ... or `transformer_0`, ...), and the pipeline sends each class to the one "
                 "that owns it (`owner` in `model_index.json`)")
        remote += f"\nIt is a multi-student model (msd): {where}; one network evaluation per step, as one student.\n"
    if record.get("autoencoder"):
        remote += (f"\nIt works on the latents of its teacher's autoencoder (`vae/`, a {record['autoencoder']}), "
                   "which the pipeline decodes into the images it returns.\n")
    moves = ("moving DDIM-like between its steps (its own predicted noise, deterministic after the first)"
             if record.get("move") == "ddim" else "re-noising its output with fresh noise between its steps")
    default = "" if custom else (f", the stock pipeline's default (`num_inference_steps=1000`) included: pass "
                                 f"`num_inference_steps={record['steps']}`")
    return f"""---
library_name: diffusers
tags: [distmatch, distillation, few-step]
---
# A {record['steps']}-step student distilled with distmatch

Distilled by distribution matching ({how}) from `{record['teacher']}`; trained at {trained}, {moves}. It runs
exactly as trained with:

```python
import torch
from diffusers import DiffusionPipeline

pipe = {load}
images = pipe(batch_size=16, num_inference_steps={record['steps']}, generator=torch.manual_seed(0)).images
```
{remote}
Other step counts are not what it was trained for{default}.
{kept_line(record.get("best"))}"""


def kept_line(best: dict | None) -> str:
    if not best:
        return ""
    metric = next(k for k in best if k not in ("it", "n"))
    return (f"\nKept at iteration {best['it']} of its run, where its scores were best ({metric} {best[metric]:.4g}, "
            f"{best['n']} samples against its training data).\n")
