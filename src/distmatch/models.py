"""Run folders as samplers: a teacher (ODE solver over its denoiser) or a student (K network evaluations).

Both expose one interface, so `sample`, `evaluate`, the report and the benchmarks treat them alike:
    sample(n, steps=None, cond=None, seed=0) -> normalised tensor;  nfe(steps);  spec;  default_steps.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .data.spec import DataSpec
from .errors import UserError, listed
from .networks import build_denoiser
from .samplers import SOLVERS, ancestral_sample, few_step_sample, in_chunks, ode_sample, teacher_nfe
from .schedules import NoiseSchedule
from .teachers.gmm import GaussianMixture


class _Counted:
    """A denoiser that moves a progress bar by one per call."""

    def __init__(self, denoiser, bar):
        self.denoiser, self.bar = denoiser, bar

    def __call__(self, *args, **kwargs):
        out = self.denoiser(*args, **kwargs)
        self.bar.update(1)
        return out


@dataclass
class LoadedModel:
    kind: str                     # "teacher" | "student"
    config: dict
    spec: DataSpec
    denoiser: torch.nn.Module     # teacher: D(x, σ, c); student: the generator G(x, σ, c) (or a router of them)
    init_net: torch.nn.Module | None = None   # teacher: the network students start from
    class_weights: list[float] = field(default_factory=list)
    path: Path | None = None      # the run folder it was loaded from (None: built in memory)
    codec: torch.nn.Module | None = None      # a latent model's autoencoder: samples are decoded images

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the network's samples: a latent model's latents, else the data's (spec.shape)."""
        return tuple(self.config.get("latent_shape") or self.spec.shape)

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 0))

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise levels the teacher was trained on (a student keeps its teacher's)."""
        return NoiseSchedule.from_config(self.config.get("schedule"))

    @property
    def default_steps(self) -> int:
        return int(self.config["sample_steps"] if self.kind == "teacher" else self.config["steps"])

    def check_steps(self, steps: int | None) -> int:
        steps = self.default_steps if steps is None else int(steps)
        if steps < 1:
            raise UserError(f"steps must be >= 1, got {steps}")
        if self.kind == "student" and steps > len(self.config["sigmas"]):
            k = len(self.config["sigmas"])
            plural = "s" if k > 1 else ""
            raise UserError(f"this student was trained for at most {k} step{plural}; {steps} were asked for")
        return steps

    def nfe(self, steps: int | None = None) -> int:
        steps = self.check_steps(steps)
        return teacher_nfe(steps, self.config["solver"]) if self.kind == "teacher" else steps

    def with_solver(self, solver: str) -> "LoadedModel":
        """The same teacher sampled with another solver (e.g. Euler, for equal-NFE comparisons)."""
        if solver not in SOLVERS:
            raise UserError(f"unknown solver {solver!r} (choose {', '.join(SOLVERS)})")
        if self.kind != "teacher":
            raise UserError("a solver is chosen for a teacher; a student samples in its own K steps")
        return replace(self, config={**self.config, "solver": solver})

    def fitted_network(self) -> "LoadedModel | None":
        """For an exact (closed-form mixture) teacher: the network fitted to it, which students start from, as a
        teacher of its own. It costs what the student's network costs per evaluation, so it is the fair baseline
        for sampling speed (the closed form is far cheaper per evaluation than any network)."""
        if self.kind != "teacher" or self.config.get("teacher") != "gmm" or self.init_net is None:
            return None
        return replace(self, denoiser=self.init_net, config={**self.config, "teacher": "network"})

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (the CPU for one without any)."""
        t = next(self.denoiser.parameters(), None)
        t = t if t is not None else next(self.denoiser.buffers(), None)
        return t.device if t is not None else torch.device("cpu")

    def class_index(self, label) -> int:
        names = [str(c) for c in self.spec.class_names]
        if not names:
            raise UserError("a class was asked for, but this model is not class-conditional")
        label = str(label)
        if label not in names and label.strip().lstrip("+-").isdigit():
            label = str(int(label))  # a class folder named 03 is the number 3, as when the data were read
        aliases = self.config.get("class_aliases") or {}  # a diffusers pipeline's id2label names
        if label not in names and label in aliases and names == [str(i) for i in range(len(names))]:
            return int(aliases[label])
        if label not in names:
            raise UserError(f"unknown class {label!r}; this model knows {listed(names)}"
                            + (" or a name of its pipeline's id2label" if aliases else ""))
        return names.index(label)

    def draw_labels(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        w = torch.tensor(self.class_weights or [1.0] * self.num_classes, dtype=torch.float64)
        return torch.multinomial(w, n, replacement=True, generator=generator)

    def in_eval_mode(self) -> "LoadedModel":
        """A teacher runs in eval mode: a user's network put back in train mode since it was wrapped would use its
        dropout and update its BatchNorm statistics."""
        if isinstance(self.denoiser, torch.nn.Module):
            self.denoiser.eval()
        return self

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, cond: torch.Tensor | int | None = None, seed: int = 0,
               batch_size: int = 2048, device=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n samples (normalised space, on the CPU; a latent model's decoded to images) and the class indices they
        were drawn for (None if unconditional); drawn on `device`, by default the model's. The noise comes from a
        CPU generator, so a seed gives the same samples on any device. `progress`: a bar over a teacher's network
        evaluations (a 1000-step sampler takes minutes; a student's K evaluations need none)."""
        from tqdm.auto import tqdm

        steps = self.check_steps(steps)
        if self.kind == "teacher":
            self.in_eval_mode()
        device = device or self.device
        g = torch.Generator().manual_seed(seed)
        if isinstance(cond, int):
            cond = torch.full((n,), cond, dtype=torch.long)
        if cond is None:
            cond = self.draw_labels(n, g)
        batches = range(0, n, batch_size)
        bar = tqdm(total=len(batches) * self.nfe(steps), desc=f"sampling the teacher ({steps} steps)",
                   unit="NFE", leave=False, dynamic_ncols=True, file=sys.stderr,
                   disable=not (progress and self.kind == "teacher"))
        out = []
        for i in batches:
            m = min(batch_size, n - i)
            z = torch.randn((m,) + self.shape, generator=g).to(device)
            c = cond[i:i + m].to(device) if cond is not None else None
            x = self._sample_batch(z, steps, c, g, bar)
            out.append((self.decoded(x) if self.codec is not None else x).cpu())
        bar.close()
        return torch.cat(out), cond

    def decoded(self, z: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """A latent model's samples as images, a chunk at a time (a decoder's activations at full resolution are
        far larger than the latents); NaN latents stay NaN for check_finite to name."""
        self.codec.to(z.device)
        bad = ~torch.isfinite(z).flatten(1).all(1)
        z = torch.where(bad[:, None, None, None], 0.0, z)
        x = torch.cat([self.codec.decode(z[i:i + chunk]) for i in range(0, len(z), chunk)])
        return torch.where(bad[:, None, None, None], float("nan"), x)

    def check_finite(self, x: torch.Tensor) -> torch.Tensor:
        """x, or one line saying how many samples are NaN or infinite and whose they are."""
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            why = "its network returns NaN or inf along the sampler" if self.kind == "teacher" else "it has diverged"
            raise UserError(f"the {self.kind} produced {bad} non-finite samples out of {len(x)}: {why}")
        return x

    def _sample_batch(self, z, steps, cond, g, bar=None):
        schedule = self.schedule
        chunked = in_chunks(self.denoiser, self.shape)
        if self.kind == "teacher":
            solver, limit = self.config["solver"], self.config.get("x0_limit")
            denoiser = chunked if bar is None or bar.disable else _Counted(chunked, bar)
            if solver == "ancestral":
                return ancestral_sample(denoiser, z, steps, cond, schedule.sigma_min, schedule.sigma_max, limit, g)
            return ode_sample(denoiser, z, steps, solver, cond, schedule.sigma_min, schedule.sigma_max, limit)
        sigmas, move = self.config["sigmas"][:steps], self.config.get("move", "renoise")
        renoise = [torch.randn(z.shape, generator=g).to(z.device) for _ in sigmas[1:]] if move == "renoise" else None
        return few_step_sample(chunked, z, sigmas, cond, renoise, schedule.input_scale(sigmas[0]), move)


def load_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / ckpt.MODEL
    if not path.is_file():
        raise UserError(f"{run_dir} holds no model weights ({ckpt.MODEL} missing)")
    return ckpt.load_tensors(path)[0]


CODEC_PREFIX = "codec."  # a latent student's autoencoder, saved beside its network's weights


def _codec(cfg: dict, weights: dict, run_dir: Path):
    """A latent student's autoencoder, rebuilt from its config and weights (None for a pixel-space student)."""
    if not cfg.get("codec"):
        return None
    from .teachers.latent import LatentCodec

    try:
        return LatentCodec.rebuild(cfg["codec"], _strip(weights, CODEC_PREFIX))
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{run_dir}: its autoencoder's weights and {ckpt.CONFIG} do not fit together ({why}); the "
                        "folder was edited or damaged: distil it again") from None


def _strip(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def resolve_device(name: str | None) -> torch.device:
    """A device name as a user gives it (cpu, cuda, cuda:1; None or auto: a GPU when one is seen), refused in one
    line when it is not there; Apple's mps is refused: the noise-level tables and flow steps are float64."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise UserError(f"device {name!r} is not available here: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps":
        raise UserError(f"device {name!r} is not supported: distmatch keeps noise levels in float64, which MPS lacks; "
                        "use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N or auto)")
    return device


def load_model(run_dir: str | Path, device="cpu", network: torch.nn.Module | None = None) -> LoadedModel:
    """A run folder's teacher or student (or a diffusers model folder's teacher), its network on `device`;
    `network`: an instance of the user's own network class, for a student distilled from a network given in
    Python."""
    from .teachers.diffusers_folder import is_diffusers_folder, load_diffusers_teacher, refuse_component

    run_dir = Path(run_dir)
    if is_diffusers_folder(run_dir):
        model = load_diffusers_teacher(run_dir)
        model.denoiser.to(device)
        return model
    refuse_component(run_dir)
    cfg = ckpt.read_model_config(run_dir)
    kind = cfg["kind"]
    spec = DataSpec.from_dict(cfg["spec"])
    weights = load_weights(run_dir)
    shape = tuple(cfg.get("latent_shape") or spec.shape)
    k, sd = int(cfg.get("num_classes", 0)), cfg.get("sigma_data", 0.5)
    if kind == "student":
        from .methods.router import build_student_generator

        if not isinstance(cfg.get("sigmas"), list) or not cfg["sigmas"]:
            raise UserError(f"{run_dir}: its {ckpt.CONFIG} names no noise levels for the student's steps; the folder "
                            "was edited or damaged: distil it again")
        codec = _codec(cfg, weights, run_dir)
        weights = {n: w for n, w in weights.items() if not n.startswith(CODEC_PREFIX)}
        gen = build_student_generator(cfg, shape, weights, network).to(device).eval()
        return LoadedModel(kind, cfg, spec, gen, class_weights=cfg.get("class_weights", []), path=run_dir,
                           codec=codec.to(device) if codec is not None else None)
    try:
        net = build_denoiser(cfg["network"], shape, k, sd)
        net.load_state_dict(_strip(weights, "net."))
        int(cfg.get("sample_steps", 1))
    except (RuntimeError, KeyError, TypeError, ValueError) as e:  # a config.json edited by hand, or damaged
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{run_dir}: its weights and {ckpt.CONFIG} do not fit together ({why}); the folder was "
                        "edited or damaged: train the teacher again") from None
    net = net.to(device).eval().requires_grad_(False)
    denoiser = net
    if cfg.get("teacher") == "gmm":
        denoiser = GaussianMixture.from_config(cfg["mixture"]).to(device)
    return LoadedModel(kind, cfg, spec, denoiser, init_net=net, class_weights=cfg.get("class_weights", []),
                       path=run_dir)


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / ckpt.CONFIG).is_file()
