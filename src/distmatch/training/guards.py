"""The trainer's guards: what a run refuses before it starts (launcher options, processes given different runs, a
folder holding another model or written by another process, settings changed on resume) and the divergence checks
of its loop."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..errors import UserError
from .logging import LOG
from .method import Method


# Keys that may differ when a run is resumed: they change how long or how loudly it runs, not what it computes.
# A distillation run also records the noise levels its student's steps actually use ("levels") and, for K > 1, how
# the steps are trained ("k_step"), both compared like any setting; so the student.* keys behind them may differ as
# long as what they resolve to agrees (a 1-step student has level σ_max whatever sigma_top / sigma_last say).
RESUMABLE_CHANGES = ("train.iters", "train.ckpt_every", "train.log_every", "train.progress", "train.preview",
                     "train.eval_every", "train.eval_n",
                     "student.sigma_top", "student.sigma_last", "student.sigmas", "student.start_sigma_max",
                     "student.critic_per_step", "student.first_only", "student.backsim")


def check_launcher_options(cfg) -> None:
    """`accelerate launch --mixed_precision` / `--gradient_accumulation_steps` would be ignored (the run's own
    settings decide, and are what its folder records): refused rather than silently run otherwise."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if asked not in ("no", cfg.precision):
        raise UserError(f"the launcher asks for --mixed_precision {asked}, but distmatch's precision is the setting "
                        f"train.precision ({cfg.precision} here; fp32 or bf16, as fp16 diverges in DMD2): set it "
                        "with --set and launch without --mixed_precision")
    if int(os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") or 1) > 1:
        raise UserError("distmatch does not accumulate gradients; launch without --gradient_accumulation_steps "
                        "and set train.batch_size (per process) instead")


# Settings added to distmatch with a default that computes otherwise than before: a run made before a key existed
# ran as its value here says, so resuming it under another value is a change of settings.
ADDED_SETTINGS = {"tdm.move": "renoise", "fdistill.features": "critic", "msd.gan": False}


def _short(value) -> str:
    """A setting's value for a one-line refusal: a whole section (a method's, when the method changed) as {...}."""
    return "{...}" if isinstance(value, dict) else repr(value)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The settings that differ, as "key: old -> new"; the teacher's folder may have moved where its weights
    (teacher_weights) are the same."""
    keys = sorted(set(old) | set(new), key=lambda k: (k not in ("method", "recipe"), isinstance(new.get(k), dict), k))
    out = []
    for k in keys:
        before = [v for key, v in ADDED_SETTINGS.items() if (prefix + k).endswith(key)]
        if k not in old and not before:  # a setting added after this run was made, which changes nothing
            continue
        a, b = old.get(k, before[0] if before else None), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix + k + ".")
        elif a != b and not (prefix + k).endswith(RESUMABLE_CHANGES) and not _moved(prefix + k, old, new):
            out.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return out


def _moved(key: str, old: dict, new: dict) -> bool:
    return key == "teacher" and old.get("teacher_weights") == new.get("teacher_weights") is not None


def check_resumable(out: Path, meta: dict, run_config: dict, acc) -> bool:
    """The checkpoint's run is this one (same settings; as many processes unless it is finished); returns whether
    it is finished. A train.iters that changed is said."""
    diffs = differences(meta.get("config", {}), run_config)
    if diffs:
        raise UserError(f"{out} holds a run with different settings ({'; '.join(diffs[:3])}); "
                        "use another --out, or the same settings to resume it")
    it = int(meta["iteration"])
    before = meta.get("config", {}).get("config", {}).get("train", {}).get("iters")
    after = run_config.get("config", {}).get("train", {}).get("iters")
    finished = it == after
    if (n := meta.get("world_size", 1)) != acc.num_processes and not finished:  # before any note on the run
        what = "grow a finished run" if it == before else "resume it"
        raise UserError(f"{out} was checkpointed with {n} process{'es' if n > 1 else ''}; {what} with the same "
                        "number")
    if before not in (None, after) and after is not None and after >= it and acc.is_main_process:
        grew = after > before  # fewer than the iterations done is refused later, with its own line
        print(f"note: train.iters {'grew' if grew else 'shrank'} from {before} to {after}: what is set as a share of "
              f"the run (a cosine decay or cool-down, a stage boundary) now spans the "
              f"{'longer' if grew else 'shorter'} run, so it ends unlike a run started at {after}", file=sys.stderr)
    moved = meta.get("config", {}).get("teacher"), run_config.get("teacher")
    if moved[0] != moved[1] and acc.is_main_process:
        print(f"note: the teacher is read from {moved[1]} now (it was {moved[0]}); its weights are the same",
              file=sys.stderr)
    return finished


def check_same_run(acc, run_config: dict) -> None:
    """Every process must train the same run: a teacher built in each process from its own random start, or other
    data, would be averaged over in silence."""
    if acc.num_processes == 1:
        return
    text = json.dumps(run_config, sort_keys=True, default=str).encode()
    digest = torch.tensor([float(int(hashlib.sha256(text).hexdigest()[:12], 16))], dtype=torch.float64)
    if len(set(acc.gather(digest.to(acc.device)).tolist())) > 1:
        raise UserError("the processes were given different runs (their teacher's weights, data or settings "
                        "differ): load the same weights and data in every process")


def check_finite(logs: dict, it: int, out: Path, precision: str = "fp32") -> None:
    bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
    if bad:
        name, value = next(iter(bad.items()))
        _diverged(f"at iteration {it + 1} ({name} = {value})", out, precision)


def check_finite_weights(method: Method, acc, out: Path, it: int, precision: str) -> None:
    """Before a checkpoint: weights gone non-finite (a loss guarded by nan_to_num can hide it from the logs) are
    not saved over the last good checkpoint. Every process checks its own copy, so all stop together."""
    for name, module in method.modules().items():
        for key, t in acc.unwrap_model(module).state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                _diverged(f"by iteration {it} ({name}.{key} is not finite)", out, precision)


def _diverged(when: str, out: Path, precision: str):
    hint = "a lower train.lr" + (" or train.precision=fp32" if precision != "fp32" else "")
    kept = (f"the checkpoint of iteration {read_checkpoint_iteration(out)} in {out} is kept" if
            (out / ckpt.CHECKPOINT).is_file() else "nothing was saved")
    raise UserError(f"training diverged {when}; {kept}; try {hint}")


# What a run writes into its folder before anything else: a folder holding one of these is a run's own.
RUN_FILES = ("run.json", ckpt.CHECKPOINT, ckpt.CONFIG, ckpt.MODEL, ckpt.DATA, LOG, ckpt.PAIRS, ckpt.PAIRS_PARTS)


def check_run_folder(out) -> Path:
    """--out is the path of a new folder, an empty one or a run's own: a run written among a user's other files
    (their data, an export) would mix with them, and a data folder would read its previews/ as a class."""
    if not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out takes the run folder's path, got {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is a file; --out names a run folder")
    if file := next((p for p in out.parents if p.exists() and not p.is_dir()), None):
        raise UserError(f"cannot make the run folder {out}: {file} is a file, not a folder")
    if not out.is_dir() or any((out / name).exists() for name in RUN_FILES):
        return out
    if others := sorted(p.name for p in out.iterdir() if not p.name.startswith(".")):  # a writer's temporary files
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(f"{out} exists and holds other files ({listed}); use a new or empty folder as --out")
    return out


def check_not_foreign(out: Path, run_config: dict) -> None:
    """A folder with a model but no checkpoint: this run's own (its run.json says so; the checkpoint was deleted)
    is trained again; another run's model or a user's files of those names are not overwritten."""
    found = next((name for name in (ckpt.CONFIG, ckpt.MODEL) if (out / name).exists()), None)
    if found is None:
        return
    try:
        stored = json.loads((out / "run.json").read_text())
        ours = not differences({k: v for k, v in stored.items() if k != "processes"}, run_config)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{out} holds {found} of another model, and no checkpoint of this run; use another --out")


def read_checkpoint_iteration(out_dir: str | Path) -> int | None:
    path = Path(out_dir) / ckpt.CHECKPOINT
    if not path.is_file():
        return None
    return int(ckpt.load_tensors(path)[1].get("iteration", 0))


@contextmanager
def folder_lock(out: Path, accelerator):
    """One run at a time in a run folder: a second command writing the same --out (another launch, or the same one
    twice) is refused, where the two used to interleave their logs and checkpoints. The first process holds an
    advisory lock on the folder itself; the system drops it when the process ends, however it ends."""
    fd, busy = None, False
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        fd, busy = _lock(out)
    if accelerator.num_processes > 1:  # every process hears it, not the first alone
        busy = bool(accelerator.gather(torch.tensor([float(busy)], device=accelerator.device)).max())
    if busy:
        raise UserError(f"another distmatch process is writing {out}; wait for it to end (re-running the command "
                        "then resumes or finds it finished), or use another --out")
    if accelerator.is_main_process:
        ckpt.remove_stale_temporaries(out)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _lock(out: Path) -> tuple[int | None, bool]:
    """(the folder's descriptor holding its lock, whether another process holds it); no lock where the system
    has no flock (the descriptor is None)."""
    try:
        import fcntl
    except ImportError:
        return None, False
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, True
    return fd, False


def check_replicated(kind) -> None:
    """Every process holds whole networks (DDP): the EMA, checkpoints and the student are read from them, which
    sharded weights (FSDP, DeepSpeed) would leave partial."""
    name = getattr(kind, "value", str(kind))
    if name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise UserError(f"accelerate is configured for {name}, which shards the networks' weights: distmatch reads "
                        "whole networks on every process (the EMA, checkpoints, the student); launch with DDP "
                        "(accelerate launch --multi_gpu, or `accelerate config` without FSDP or DeepSpeed)")
