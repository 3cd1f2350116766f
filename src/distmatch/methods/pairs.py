"""The teacher's noise->sample pairs: fixed noises z and the teacher's ODE samples y = ODE(σ_0 z), made once when
training starts, cached in the run folder (atomic) and reused when the run resumes. DMD regresses its student on
them throughout; DMD2 and f-distill can warm their student up on them before distribution matching (`ode_init`)
and keep regressing on them beside it (`ode_weight`).

K-step students: the pairs also hold the ODE's states at the student's later levels σ_1..σ_{K-1}. Such a state is
distributed as the teacher's marginal at σ_k, which is what step k's input (the previous output re-noised to σ_k)
should be, and the ODE carries it to y; so step k is regressed on (state at σ_k -> y), step 0 on (σ_0 z -> y).
Every step gets a deterministic anchor on the teacher's map, not only the first."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..errors import UserError
from ..samplers import ODE_SOLVERS, in_chunks, ode_trajectory
from ..schedules import SIGMA_MIN

PAIRS_FILE, PARTS_DIR = ckpt.PAIRS, ckpt.PAIRS_PARTS
# Pairs made by default for image teachers, by every method that regresses on them: an image teacher's ODE costs
# 18 Heun steps per pair (MNIST: ~36 pairs/s on one CPU thread, so 1024 in 30 s where 16384 took 8 min).
IMAGE_PAIRS = 1024


def save_chunk(parts: Path, start: int, y: torch.Tensor, states: torch.Tensor | None, meta: dict) -> None:
    """One chunk of pairs (atomic), with the settings it was made with."""
    parts.mkdir(exist_ok=True)
    tensors = {"sample": y} if states is None else {"sample": y, "states": states}
    ckpt.save_tensors(parts / f"{start}.safetensors", tensors, meta)


def made_chunks(parts: Path, meta: dict) -> dict:
    """The chunks saved in `parts` with these settings, by their start (a damaged file or other settings: none)."""
    made = {}
    for path in parts.glob("*.safetensors"):
        try:
            tensors, stored = ckpt.load_tensors(path)
        except UserError:
            continue
        if stored == meta:
            made[int(path.stem)] = (tensors["sample"], tensors.get("states"))
    return made


def regression_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The regression loss E ||G(z) - y||² (mean over elements), y = the teacher's ODE sample from the same z.

    Its gradient 2(x - y)/numel is on the DM surrogate's scale (g/numel, |g| ~ 1 per element when far off), so
    λ_reg = 1 makes a regression error of half a data unit pull like a far-off DM gradient. Both losses agree at
    the optimum (G = the teacher's ODE map), so λ_reg trades speed of convergence, not bias.
    """
    return ((x.float() - y.float()) ** 2).mean()


@torch.no_grad()
def make_pairs(denoiser, n: int, shape, steps: int, solver: str, sigma_max: float, class_weights: list[float],
               seed: int, device, chunk: int | None = None, levels: list[float] = (),
               sigma_min: float = SIGMA_MIN, limit: dict | None = None, progress: bool = False,
               accelerator=None, made: dict | None = None, keep=None) -> dict[str, torch.Tensor]:
    """n fixed noises z, the teacher's ODE samples y = ODE(σ_max z) and their class labels (drawn with the data's
    class weights; none for unconditional teachers), from a private generator so every process makes the same;
    with `levels`, also the ODE's states there ("states", (n, len(levels), ...)); `limit`: the teacher's own
    x̂_0 limit, as its sampler applies it (samplers.limit_x0); `progress`: a bar, as this can take minutes.
    With an `accelerator` of several processes each solves its share of the chunks and all receive every pair:
    the same pairs as one process makes, in 1/N of its time. `made`: chunks made before (chunk start -> (samples,
    states)), not made again; `keep(start, samples, states)`: called with each chunk this process makes."""
    from tqdm.auto import tqdm

    chunk = chunk or (1024 if len(shape) == 1 else 256)  # images: smaller chunks, so the bar moves
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n,) + tuple(shape), generator=g)
    labels = None
    if class_weights:
        labels = torch.multinomial(torch.tensor(class_weights, dtype=torch.float64), n, replacement=True, generator=g)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    made = made or {}
    starts = [i for i in range(0, n, chunk) if i not in made][rank::world]
    bar = tqdm(total=sum(min(chunk, n - i) for i in starts), desc=f"teacher ODE pairs ({steps} {solver} steps)",
               unit="pair", leave=False, dynamic_ncols=True, disable=not progress, file=sys.stderr)
    done = {}  # chunk start -> (samples, states at `levels`)
    for i in starts:
        c = labels[i:i + chunk].to(device) if labels is not None else None
        y, st = ode_trajectory(in_chunks(denoiser, shape), z[i:i + chunk].to(device), steps, solver, c, levels,
                               sigma_min, sigma_max, limit)
        done[i] = (y.float().cpu(), torch.stack(st, 1).float().cpu() if levels else None)
        if keep is not None:
            keep(i, *done[i])
        bar.update(len(y))
    bar.close()
    if world > 1:
        from accelerate.utils import gather_object
        done = {i: part for shares in gather_object([done]) for i, part in shares.items()}
    done.update(made)
    order = sorted(done)
    out = {"noise": z, "sample": torch.cat([done[i][0] for i in order])}
    if levels:
        out["states"] = torch.cat([done[i][1] for i in order])
    if labels is not None:
        out["labels"] = labels
    return out


def teacher_fingerprint(teacher, with_folder: bool = False) -> str:
    """A cheap identity of the teacher (config + per-tensor sums) so a cache made by another teacher is not reused;
    `with_folder`: with the folder's path, as runs begun before it was left out recorded it."""
    config = {k: v for k, v in teacher.config.items() if with_folder or k != "folder"}  # where it lies is not what
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    codec = teacher.codec.state_dict() if teacher.codec is not None else {}  # a latent model's autoencoder too
    for name, t in {**teacher.denoiser.state_dict(), **{"codec." + k: v for k, v in codec.items()}}.items():
        t = t.detach().cpu().double()  # on the CPU: sums must not depend on the device the teacher sits on
        h.update(f"{name}:{tuple(t.shape)}:{float(t.sum()):.12e}:{float(t.abs().sum()):.12e}".encode())
    return h.hexdigest()[:16]


def lowest_level(schedule) -> dict:
    """The teacher's lowest training level, where its ODE ends, when it is not EDM's σ_min (kept out of the cache's
    settings then, so that pairs made before stay valid)."""
    s = schedule.sigma_min
    return {"sigma_min": s} if schedule.kind != "ve" or abs(s / SIGMA_MIN - 1) > 1e-9 else {}


def ode_solver(teacher) -> str:
    """DMD's pairs are the teacher's deterministic noise -> sample map: its ODE solver, Heun for a teacher that
    samples with the (stochastic) ancestral sampler."""
    return teacher.config["solver"] if teacher.config["solver"] in ODE_SOLVERS else "heun"


def check_ode_init(section: str, share: float, count: int, weight: float = 0.0, count_key: str = "ode_pairs") -> None:
    """The pairs' settings of a method, each refused by its own key (`share` None: the method has no warm-up)."""
    if share is not None and not 0.0 <= share <= 1.0:
        raise UserError(f"{section}.ode_init must be a share in [0, 1], got {share}")
    if count < 1:
        raise UserError(f"{section}.{count_key} must be >= 1, got {count}")
    if weight < 0:
        raise UserError(f"{section}.ode_weight must be >= 0, got {weight}")


class OdePairs:
    """For a StudentCriticMethod (it provides ctx, real, student, step_generator, class_weights): the pairs,
    batches of them, and the regression warm-up of the student on them (`ode_init`)."""

    pairs: dict[str, torch.Tensor] | None = None

    def step(self, batch, it: int) -> dict[str, float]:
        """The ODE warm-up while it lasts (`opts.ode_init`), then the method's own step."""
        o = self.opts
        count = getattr(o, "ode_pairs", None) or o.pairs  # dmd names its pairs `pairs`
        return self.ode_warmup(it, self.teacher, o.ode_init, count, o.guidance) or super().step(batch, it)

    def ode_warmup(self, it: int, teacher, share: float, count: int, guidance: float) -> dict[str, float] | None:
        """During the first `share` of the iterations: one regression update of the student (every step of a K-step
        one) on the teacher's ODE pairs (DMD2's start for its 1-step SDXL student), and its logs; after them, None.
        The critic waits: it starts as the teacher, which is what a student that has learnt the teacher's map
        needs."""
        if it >= int(round(share * self.ctx.train.iters)):
            return None
        self.load_pairs(teacher, count, guidance)
        x_in, sigma_in, y, c = self.regression_batch(self.ctx.train.batch_size)
        with self.ctx.autocast():
            x = self.gen(x_in, sigma_in, c).float()
        loss = regression_loss(x, y)
        self.step_generator(loss, it)
        return {"loss_reg": loss.item()}

    def sample_and_regress(self, n: int, cond, steps, teacher, weight: float, count: int, guidance: float):
        """The student's samples at `steps` (with gradients) and, with `weight` > 0, the regression loss of its
        steps on a batch of n pairs (else None), in one generator pass (DDP allows one forward per backward)."""
        if weight <= 0:
            with self.ctx.autocast():
                return self.student.sample(self.gen, cond, steps, grad=True).float(), None
        self.load_pairs(teacher, count, guidance)
        r_in, r_sigma, y, c = self.regression_batch(n)
        x_in = self.student.input_at(self.gen, steps, cond)
        both_cond = torch.cat([cond, c]) if cond is not None else None
        with self.ctx.autocast():
            out = self.gen(torch.cat([x_in, r_in]), torch.cat([self.student.sigma_of(steps), r_sigma]),
                           both_cond).float()
        return out[:n], regression_loss(out[n:], y)

    def pairs_meta(self, teacher, count: int, guidance: float) -> dict:
        return {"pairs": count, "seed": self.ctx.train.seed, "steps": teacher.default_steps,
                "solver": ode_solver(teacher), "sigma_max": self.student.sigmas[0], "guidance": guidance,
                "shape": list(teacher.shape), "class_weights": self.class_weights,
                "teacher": teacher_fingerprint(teacher), **self.pair_levels(),
                **lowest_level(teacher.schedule),
                **({"x0_limit": teacher.config["x0_limit"]} if teacher.config.get("x0_limit") else {})}

    def pair_levels(self) -> dict:
        """The K-step student's later levels, at which the pairs hold the ODE's states (none for 1 step)."""
        return {"levels": [float(s) for s in self.student.sigmas[1:]]} if len(self.student.sigmas) > 1 else {}

    def load_pairs(self, teacher, count: int, guidance: float) -> dict[str, torch.Tensor]:
        """The run's pairs, held from the first call on: the cached ones when the run folder holds ones made with
        these settings, else new ones (then cached)."""
        if self.pairs is None:
            self.pairs = self._load_or_make_pairs(teacher, count, guidance)
        return self.pairs

    def _load_or_make_pairs(self, teacher, count: int, guidance: float) -> dict[str, torch.Tensor]:
        out_dir, meta = getattr(self.ctx, "out_dir", None), self.pairs_meta(teacher, count, guidance)
        path = Path(out_dir) / PAIRS_FILE if out_dir is not None else None
        if path is not None and path.is_file():
            try:
                tensors, stored = ckpt.load_tensors(path)
            except UserError:  # a damaged cache: the pairs are a function of their settings, made again alike
                tensors, stored = {}, {"damaged": True}
            whole = all(len(t) == meta["pairs"] and torch.isfinite(t.float()).all() for t in tensors.values())
            if stored == meta and whole:
                return tensors
            why = ("cannot be read" if stored.get("damaged") else "holds cut or non-finite pairs" if stored == meta
                   else "was made with other settings or another teacher")
            if self.ctx.accelerator.is_main_process:
                print(f"{path} {why}; making new pairs", file=sys.stderr)
        acc = self.ctx.accelerator
        parts = path.parent / PARTS_DIR if path is not None else None
        made = made_chunks(parts, meta) if parts is not None else {}
        acc.wait_for_everyone()  # every process has read the chunks made before any writes new ones
        keep = None if parts is None else lambda i, y, states: save_chunk(parts, i, y, states, meta)
        pairs = make_pairs(self.real, meta["pairs"], meta["shape"], meta["steps"], meta["solver"], meta["sigma_max"],
                           self.class_weights, meta["seed"], self.ctx.device, levels=meta.get("levels", []),
                           sigma_min=meta.get("sigma_min", SIGMA_MIN), limit=meta.get("x0_limit"),
                           progress=self.ctx.train.progress and acc.is_main_process, accelerator=acc, made=made,
                           keep=keep)
        if path is not None and acc.is_main_process:
            ckpt.save_tensors(path, pairs, meta)  # every process holds the same pairs
        acc.wait_for_everyone()
        if parts is not None and acc.is_main_process:  # the whole set is saved: its chunks are no longer needed
            shutil.rmtree(parts, ignore_errors=True)
        return pairs

    def regression_batch(self, n: int):
        """n pairs as (the student's inputs, their levels, the teacher's samples, labels or None): σ_0 z at σ_0 for
        a 1-step student; for K steps, each pair assigned a step k (spread evenly) and given the ODE's state at
        σ_k (σ_0 z for k = 0)."""
        idx = torch.randint(len(self.pairs["noise"]), (n,))
        sig = self.student.sigmas
        x_in = self.pairs["noise"][idx] * sig[0]
        sigma = torch.full((n,), float(sig[0]))
        if len(sig) > 1:
            k = (torch.arange(n) % len(sig))[torch.randperm(n)]
            later = k > 0
            x_in[later] = self.pairs["states"][idx[later], k[later] - 1]
            sigma = torch.tensor(sig, dtype=torch.float32)[k]
        labels = self.pairs.get("labels")
        dev = self.ctx.device
        return (x_in.to(dev), sigma.to(dev), self.pairs["sample"][idx].to(dev),
                labels[idx].to(dev) if labels is not None else None)
