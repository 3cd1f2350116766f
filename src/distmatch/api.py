"""The Python API: the command's jobs as functions, on run folders or on objects already in memory.

    import distmatch
    teacher = distmatch.train_teacher("moons", "runs/t")                 # a preset, a path, or an array
    student = distmatch.distill(teacher, "runs/s", steps=1)              # or a run folder, or wrap_teacher(net, ...)
    x = distmatch.load("runs/s").sample(1000)                            # numpy, in the data's own layout and range
    scores = distmatch.evaluate(student, "moons", n=2000)                # the `evaluate` command's JSON, as a dict
    distmatch.export(image_student, "runs/pipe")                         # a folder stock diffusers loads

`settings` is a dict of the same dotted keys as `--set` ({"train.iters": 500}), checked the same way. Data held
in memory are written into the run folder (data.npz) so the run can be resumed and its student evaluated later.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .data import DataSpec, as_numpy, from_arrays, is_preset, load_data
from .errors import UserError, naming
from .models import LoadedModel, load_model
from .teachers.wrap_checks import checked_codec, checked_convention, checked_levels, checked_wrap
from .training.guards import check_run_folder


class Model:
    """A teacher or student, sampling in the user's own layout, dtype and value range."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @property
    def kind(self) -> str:
        """"teacher" or "student"."""
        return self.loaded.kind

    @property
    def path(self) -> Path | None:
        """The folder it was loaded from (None: built in memory)."""
        return self.loaded.path

    @property
    def spec(self) -> DataSpec:
        """What its samples are: kind, shape, layout, dtype, value range, class names."""
        return self.loaded.spec

    @property
    def default_steps(self) -> int:
        """The steps it samples at by default (a teacher's solver steps, a student's K)."""
        return self.loaded.default_steps

    def nfe(self, steps: int | None = None) -> int:
        """Network evaluations per sample at `steps` (default: the model's own)."""
        return self.loaded.nfe(steps)

    def sample(self, n: int, steps: int | None = None, cls=None, seed: int = 0, return_labels: bool = False):
        """n samples as a numpy array like the training data; `cls`: a class label as it was in the data (default:
        classes drawn as in the data); with `return_labels`, also each sample's label."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(f"n must be a whole number >= 1, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
            raise UserError(f"seed must be a whole number in 0..{2 ** 32 - 1}, got {seed!r}")
        seed = int(seed)
        cond = self.loaded.class_index(cls) if cls is not None else None
        x, labels = self.loaded.sample(n, steps, cond, seed=seed)
        self.loaded.check_finite(x)
        out = self.spec.to_user(x)
        if not return_labels:
            return out
        names = self.spec.class_names
        return out, (np.asarray([names[i] for i in labels.tolist()]) if labels is not None else None)

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else " (in memory)"
        return f"<distmatch {self.kind}{where}: {self.spec.describe()}, {self.nfe()} network evaluations>"


def _overrides(settings: dict | None, progress: bool) -> list[str]:
    """A settings dict as --set items (JSON values read back as YAML, so types survive)."""
    if settings is not None and not isinstance(settings, dict):
        raise UserError(f"settings takes a dict of dotted keys such as {{'train.iters': 500}}, got "
                        f"{type(settings).__name__}")
    items = []
    for key, value in (settings or {}).items():
        if not isinstance(key, str):
            raise UserError(f"settings keys are dotted names such as 'train.iters', got {key!r}")
        try:
            items.append(f"{key}={json.dumps(value, default=_plain)}")
        except (TypeError, ValueError) as e:
            raise UserError(f"settings '{key}': {e}") from None
    return items + ([] if progress else ["train.progress=false"])


def _plain(value):
    """numpy and torch numbers and arrays in a settings dict, as the Python values they hold."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"a settings value must be a number, string, bool or list, got a {type(value).__name__}")


def _source(data, labels, out: Path) -> str | None:
    """A data source the run can re-read: a preset name or path as given, or in-memory arrays saved in the run."""
    if data is None or isinstance(data, (str, Path)):
        if labels is not None:
            raise UserError("labels= goes with in-memory data; a file carries its own labels")
        return None if data is None else str(data)
    dataset = from_arrays(data, labels)  # checks them before anything is written
    buf = io.BytesIO()
    arrays = {"data": as_numpy(data)}
    if labels is not None:
        arrays["labels"] = as_numpy(labels)
    np.savez(buf, **arrays)
    path = out / ckpt.DATA
    # a call refused before its first checkpoint leaves its data behind: that file holds no run yet
    started = any((out / name).exists() for name in (ckpt.CHECKPOINT, ckpt.MODEL))
    if path.exists() and started:
        kept = load_data(str(path))
        if kept.spec.fingerprint != dataset.spec.fingerprint:
            raise UserError(f"{out} already holds a run on other data ({path}); use another folder")
        return str(path.resolve())
    ckpt.atomic_write_bytes(path, buf.getvalue())
    return str(path.resolve())


def train_teacher(data, out, settings: dict | None = None, labels=None, progress: bool = True) -> Model:
    """Train a teacher on `data` (a preset name, a path, or an array/tensor with `labels=` beside it) into the run
    folder `out`; re-running resumes it. Ctrl-C (or SIGTERM) stops it after the current step, checkpointed, and
    raises distmatch.Interrupted (a KeyboardInterrupt); bad input raises distmatch.UserError, whose message is one
    line naming what is wrong."""
    from .teachers.train import train_teacher as train

    out = check_run_folder(out)  # before in-memory data are saved in it
    source = _source(data, labels, out)
    if source is None:
        raise UserError("train_teacher needs data")
    with naming(None if isinstance(data, (str, Path)) else source, "in-memory data"):
        return Model(load_model(train(source, out, None, _overrides(settings, progress))))


def distill(teacher, out, data=None, labels=None, method: str | None = None, steps: int | None = None,
            settings: dict | None = None, recipe: str | None = None, progress: bool = True) -> Model:
    """Distil `teacher` (a run folder, a Model, or a network from wrap_teacher) into a `steps`-step student in the
    run folder `out` (default: the method's own, as student.steps in `settings`: 1, tdm 4), with `method` as
    published (default dmd2) or a named `recipe`; `data` as for train_teacher (default: the teacher's own).
    Re-running resumes it; Ctrl-C and bad input as for train_teacher."""
    from .methods import load_teacher, run_distill

    out = check_run_folder(out)  # before in-memory data are saved in it
    if not isinstance(teacher, (str, os.PathLike, Model, LoadedModel)):
        wrap = (f"; wrap your {type(teacher).__name__} first: distmatch.wrap_teacher(net, sample_shape=..., ...)"
                if isinstance(teacher, torch.nn.Module) else f", got {type(teacher).__name__}")
        raise UserError(f"distill takes a teacher made by wrap_teacher, load or train_teacher, or a folder{wrap}")
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(teacher)
    loaded = teacher.loaded if isinstance(teacher, Model) else teacher
    if labels is not None and not loaded.num_classes:
        print("warning: labels= are not used: the teacher is unconditional", file=sys.stderr)
    source = _source(data, labels, out)
    with naming(None if data is None or isinstance(data, (str, Path)) else source, "in-memory data"):
        run_distill(loaded, out, method, steps, None, _overrides(settings, progress), source, recipe=recipe)
    return Model(load_model(out, network=users_network(loaded)))


def export(model, out) -> Path:
    """Write a student (a Model or a run folder) as the folder `out` that stock diffusers loads, as the `export`
    command does: DiffusionPipeline.from_pretrained(out), with trust_remote_code=True where the folder carries its
    own pipeline.py (class-conditional, latent or distmatch's U-Net students; its README.md says which). Returns
    `out`; exporting the same student into it again changes nothing."""
    from .to_diffusers import export_student

    path = model.path if isinstance(model, Model) else model
    if path is None:
        raise UserError("export writes a student of a run folder; this model lives in memory only (a wrapped teacher)")
    return export_student(path, out)  # every process of a launched script may call it: one export is kept


def users_network(teacher: LoadedModel) -> torch.nn.Module | None:
    """The user's own network inside a wrapped teacher (a student of it is rebuilt around a copy), else None."""
    from .teachers.adapters import TeacherAdapter

    return teacher.init_net.net if isinstance(teacher.init_net, TeacherAdapter) else None


def load(path, network: torch.nn.Module | None = None, device: str = "cpu") -> Model:
    """A teacher or student run folder, or a diffusers model folder; `network`: an instance of your own network
    class, for a student distilled from a network you wrapped with wrap_teacher; `device`: where it samples (cpu,
    cuda, cuda:N, or auto for a GPU when one is seen). A seed gives the same samples on any device."""
    from .models import resolve_device

    if network is not None and not isinstance(network, torch.nn.Module):
        what = f"the class {network.__name__}" if isinstance(network, type) else f"a {type(network).__name__}"
        raise UserError(f"network= takes an instance of your network (MyNet(...)), got {what}")
    network = network if network is None else _users_network(network)
    return Model(load_model(path, device=resolve_device(device), network=network))


def evaluate(model, data, n: int = 2000, steps: int | None = None, seed: int = 0, labels=None,
             inception=None, solver: str | None = None, device: str = "cpu", progress: bool = True) -> dict:
    """`n` samples of `model` (a Model or a run folder) scored against `data` (a preset means its held-out split; a
    path; or an array with labels=): the `evaluate` command's JSON as a dict. Images are scored on Inception-v3
    features when `inception` (or $DISTMATCH_INCEPTION) names a local weights file, else on an in-domain network.
    `solver` (a teacher only): heun, euler or ancestral instead of the teacher's own. `device`: where a model
    given as a folder samples (see load); the scores are computed on the CPU. `progress=False` silences its bars
    (a teacher's sampling, fitting the in-domain feature network)."""
    from .eval.evaluate import evaluate_model

    model = model if isinstance(model, Model) else load(model, device=device)
    if solver is not None:
        model = Model(model.loaded.with_solver(solver))
    if inception is not None and model.spec.kind == "vector":
        raise UserError("an Inception network scores images; this model makes vectors (drop --inception)")
    if isinstance(data, (str, Path)):
        preset = is_preset(str(data))
        reference, name = load_data(str(data), split="test" if preset else "train", spec=model.spec), str(data)
        split = "test" if preset else "whole file"  # a user's file is scored whole
    else:
        split, name = "given", "in-memory data"
        reference = from_arrays(data, labels, spec=model.spec)
    result = evaluate_model(model.loaded, reference, n=n, steps=steps, seed=seed, inception=inception,
                            data=name if split != "given" else None, progress=progress)
    where = str(model.path.resolve()) if model.path is not None else "in memory"
    result.update({"model": where, "data": name, "split": split})
    return result


def _users_network(net: torch.nn.Module) -> torch.nn.Module:
    """A user's network as distmatch runs it: the module inside torch.compile's wrapper (distmatch reads a
    sub-module's output for the GAN's features, which compiled code does not give, and copies the network for its
    student and critic), in float32 weights (its student is trained as such a copy)."""
    inner = getattr(net, "_orig_mod", None)
    if type(net).__name__ == "OptimizedModule" and isinstance(inner, torch.nn.Module):
        print(f"warning: distmatch runs the {type(inner).__name__} inside torch.compile's wrapper uncompiled",
              file=sys.stderr)
        net = inner
    if other := sorted({str(p.dtype) for p in net.parameters() if p.is_floating_point() and p.dtype != torch.float32}):
        raise UserError(f"the network's parameters are {', '.join(other)}: distmatch runs it, and trains its student "
                        "as a copy of it, in float32; pass net.float() (train.precision=bf16 trains in mixed "
                        "precision)")
    return net


def _sigma_space_adapter(net, prediction, num_classes, features, sigma_data, sigma_min, sigma_max):
    """A σ-space network's adapter over [sigma_min, sigma_max] (EDM's, or a score network's); a default top far
    below EDM's 160 σ_data is said."""
    from .schedules import SIGMA_MAX, SIGMA_MIN
    from .teachers.adapters import EDMAdapter, ScoreAdapter

    if prediction == "score":  # score SDE's VE network on [-1, 1], trained on σ log-uniform over its range
        return ScoreAdapter(net, SIGMA_MIN if sigma_min is None else float(sigma_min),
                            SIGMA_MAX if sigma_max is None else float(sigma_max), (-1.0, 1.0), num_classes, features)
    if sigma_max is None and SIGMA_MAX < 20 * float(sigma_data):
        print(f"warning: the default sigma_max = {SIGMA_MAX:g} is {SIGMA_MAX / sigma_data:.3g} x sigma_data (EDM: 160 "
              "x): its noise hides little of such data; give wrap_teacher the sigma_max the network was trained to",
              file=sys.stderr)
    return EDMAdapter(net, prediction or "x0", num_classes, features,
                      SIGMA_MIN if sigma_min is None else float(sigma_min),
                      SIGMA_MAX if sigma_max is None else float(sigma_max))


def wrap_teacher(net: torch.nn.Module, sample_shape, prediction: str | None = None, alphas_cumprod=None,
                 timesteps: str = "continuous", flow: bool = False, shift: float = 1.0, time_scale: float = 1000.0,
                 num_train_timesteps: int = 1000, value_range=None, num_classes: int = 0,
                 features: str | None = "auto", sigma_data: float = 0.5, solver: str = "heun",
                 sample_steps: int | None = None, clip_sample: float | None = None, sigma_min: float | None = None,
                 sigma_max: float | None = None, vae: torch.nn.Module | None = None) -> Model:
    """A network of yours as a teacher that distill() and Model.sample accept; samples are a (C, H, W) image in
    `value_range` or a (D,) vector. An image network works on [-1, 1]; `value_range=(lo, hi)` says that it stands
    for pixel values lo..hi (data are then read in that range and must lie in it); without it, data keep their own
    range (uint8: 0..255), mapped to [-1, 1], and the teacher alone samples in [-1, 1].

    Without `alphas_cumprod`, `net` is a σ-space denoiser called as net(x_σ, σ[, labels]) that returns x̂_0
    (`prediction="x0"`, the default), ε̂ (`"epsilon"`) or the score ∇log p (`"score"`: score SDE's VE networks,
    x̂_0 = x + σ² s, trained on σ log-uniform over their range). With `alphas_cumprod` (one ᾱ_t per training timestep,
    e.g. a diffusers scheduler's), `net` is a DDPM-style network called as net(x_t, t[, labels]) predicting
    `"epsilon"` (default), `"v_prediction"` or `"sample"`; `timesteps="discrete"` feeds it integer t only (for a
    time embedding that is a lookup table). With `flow=True`, `net` is a flow-matching network called as
    net(x_s, t[, labels]) on x_s = (1-s) x_0 + s ε with t = time_scale · s, predicting the velocity ε - x_0, trained
    on a flow scheduler's `num_train_timesteps` levels after `shift`. Adapt other time scalings with a small module.
    σ or t arrives as a (batch,) float32 tensor (int64 with `timesteps="discrete"`), labels as (batch,) int64.
    A σ-space denoiser was trained on σ in [`sigma_min`, `sigma_max`] (default EDM's 0.002 and 80, made for data of
    std `sigma_data` = 0.5: give your own range when your data's spread differs); `sigma_data` also scales the
    critic's loss weights and a K-step student's default levels (student.sigma_top / sigma_last are for 0.5).
    An image network returning twice the sample's channels (its prediction and a learned variance, as improved
    DDPM and ADM) is read as its first half. `num_classes` > 0: class-conditional, with the label `num_classes`
    meaning "no class" if the network was trained for classifier-free guidance. `features`: the sub-module whose
    output a GAN head reads (the network's bottleneck), for methods with a GAN; "auto" finds it (an image
    network's lowest-resolution feature map where the encoder ends, a vector network's last hidden layer) and
    the run records which; None: no features (then turn the method's GAN off). `solver`: how distmatch samples
    the teacher, heun or euler (its probability-flow ODE, `sample_steps` steps) or ancestral (DDPM's stochastic
    sampler). `clip_sample`: clamp x̂_0 to ±clip_sample while distmatch samples the teacher (and solves its ODE
    for regression pairs), as a diffusers scheduler with `clip_sample=True` does; leave it None when your own
    sampler does not clip. `net` is put in eval mode and its parameters frozen (requires_grad False): a teacher
    stays as it is, and its students and critics are trained as copies of it. `vae`: a latent model's diffusers
    autoencoder (AutoencoderKL or VQModel, with its scaling_factor): `net` works on its latents, of shape
    `sample_shape`; data are images it encodes, samples are images it decodes, and `value_range` is theirs."""
    from .teachers.adapters import FlowAdapter, VPAdapter, kept_fixed

    shape = checked_wrap(net, sample_shape, solver, clip_sample, value_range, sample_steps)
    checked_convention(flow, alphas_cumprod, timesteps, shift, time_scale, num_train_timesteps)
    net = _users_network(net)
    checked_levels(num_classes, sigma_data, sigma_min, sigma_max, flow or alphas_cumprod is not None)
    fixed = kept_fixed(net)
    net = net.eval().requires_grad_(False)
    if flow:
        if alphas_cumprod is not None or prediction not in (None, "velocity"):
            raise UserError("a flow teacher predicts the velocity and has no alphas_cumprod")
        adapter = FlowAdapter(net, num_train_timesteps, shift, time_scale, num_classes, features)
    elif alphas_cumprod is None:
        adapter = _sigma_space_adapter(net, prediction, num_classes, features, sigma_data, sigma_min, sigma_max)
    else:
        adapter = VPAdapter(net, alphas_cumprod, prediction or "epsilon", timesteps, num_classes, features)
    adapter.fixed = fixed
    _probed_where_the_network_is(adapter, net, shape)
    config = {"kind": "teacher", "teacher": "external", "network": adapter.config(), "num_classes": num_classes,
              "class_weights": [1.0 / num_classes] * num_classes if num_classes else [], "sigma_data": sigma_data,
              "solver": solver, "sample_steps": sample_steps or (40 if len(shape) == 1 else 18),
              "schedule": adapter.schedule().config()}
    if clip_sample is not None:
        config["x0_limit"] = {"range": float(clip_sample)}
    return Model(_wrapped_teacher(adapter, config, shape, value_range, checked_codec(vae, shape)))


def _probed_where_the_network_is(adapter, net, shape) -> None:
    """The adapter's tables (a DDPM's σ per timestep) moved to the network's device (a network on one), then the
    adapter probed on samples of `shape`."""
    devices = {t.device for t in itertools.chain(net.parameters(), net.buffers())}
    if len(devices) == 1:
        adapter.to(devices.pop())
    adapter.probe(shape)


def _wrapped_teacher(adapter, config: dict, shape, value_range, codec) -> LoadedModel:
    """The wrapped network as a teacher; a latent one's samples are its autoencoder's images."""
    if codec is not None:
        config = {**config, "latent_shape": list(shape), "codec": codec.config()}
    spec = _wrapped_spec(codec.image_shape(shape) if codec is not None else shape, config["num_classes"], value_range)
    return LoadedModel("teacher", {**config, "spec": spec.to_dict()}, spec, adapter, init_net=adapter,
                       class_weights=config["class_weights"], codec=codec)


def _wrapped_spec(shape, num_classes: int, value_range) -> DataSpec:
    """A wrapped network's samples: vectors as they are, images on [-1, 1] standing for value_range."""
    common = dict(shape=shape, source="", dtype="float32", class_names=list(range(num_classes)))
    if len(shape) == 1:
        return DataSpec(kind="vector", **common, layout="nd", shift=[0.0] * shape[0], scale=[1.0] * shape[0])
    return DataSpec(kind="image", **common, layout="nchw", value_range=[float(v) for v in value_range or (-1, 1)],
                    range_fixed=value_range is not None)
