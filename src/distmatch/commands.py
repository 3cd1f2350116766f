"""The subcommands behind `distmatch` (argument parsing lives in cli.py)."""
from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .errors import UserError


def _announce(line: str) -> None:
    """Print once, from the main process, however many processes accelerate launched."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(line)


def teacher(args) -> int:
    from .teachers.train import train_teacher

    out = train_teacher(args.data, args.out, args.config, args.overrides)
    _announce(f"teacher ready in {out}")
    return 0


def distill(args) -> int:
    from .methods import run_distill

    out = run_distill(args.teacher, args.out, args.method, args.steps, args.config, args.overrides, args.data,
                      recipe=args.recipe)
    _announce(f"student ready in {out}")
    return 0


def _write_npy(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    if path.suffix == ".npz":
        np.savez(buf, **arrays)
    else:
        np.save(buf, arrays["samples"])
    ckpt.atomic_write_bytes(path, buf.getvalue())


# The files of a model folder that sample / evaluate could name as --out (.json, .npy, .npz) and must not replace
MODEL_FILES = ("config.json", "run.json", "model_index.json", "scheduler_config.json", ckpt.DATA)


def check_folder_of(out: Path, model: str | None = None) -> None:
    """Before the work: an output file's folder must not be a file, nor the file one of the model's own."""
    if file := next((p for p in out.parents if p.exists() and not p.is_dir()), None):
        raise UserError(f"cannot write {out}: {file} is a file, not a folder")
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; name a file in it")
    if not os.access(next(p for p in out.parents if p.exists()), os.W_OK):
        raise UserError(f"cannot write {out}: permission denied")
    folder = Path(model).resolve() if model else None
    if folder and out.name in MODEL_FILES and out.is_file() and folder in out.resolve().parents:
        raise UserError(f"--out {out} is a file of the model folder {model}; write the output elsewhere")


MAX_PICTURE_IMAGES = 1024  # a 32 x 32 grid; more is a file to read back, not a picture to look at


def _picture_check(out: Path, model, n: int) -> None:
    """--out x.png draws the samples instead of writing them: say before sampling when it cannot."""
    if model.spec.kind != "image" and model.spec.shape[0] < 2:
        raise UserError(f"--out {out}: 1-D samples make no picture; write .npy or .npz")
    if model.spec.kind == "image" and n > MAX_PICTURE_IMAGES:
        raise UserError(f"--out {out}: a picture shows at most {MAX_PICTURE_IMAGES} images, got --n {n}; ask for "
                        "fewer or write .npy / .npz")


def _check_memory(n: int, model) -> None:
    """n samples are held in memory (float32) before they are written: more than the machine has is said now, not
    after hours of sampling."""
    need, have = 4 * n * math.prod(model.spec.shape), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise UserError(f"--n {n} samples of shape {tuple(model.spec.shape)} take {need / 1e9:.3g} GB, more than this "
                        f"machine's {have / 1e9:.3g} GB of memory: ask for fewer (more with another --seed)")


def sample(args) -> int:
    from .models import load_model, resolve_device

    out = Path(args.out)
    if out.suffix not in (".npy", ".npz", ".png"):
        raise UserError(f"--out must end in .npy or .npz (the samples) or .png (a picture of them), got {args.out}")
    check_folder_of(out, args.model)
    model = load_model(args.model, device=resolve_device(args.device))
    if args.solver is not None:
        model = model.with_solver(args.solver)
    if out.suffix == ".png":
        _picture_check(out, model, args.n)
    _check_memory(args.n, model)
    cond = model.class_index(args.cls) if args.cls is not None else None
    x, labels = model.sample(args.n, args.steps, cond, seed=args.seed, progress=True)
    model.check_finite(x)
    if out.suffix == ".png":
        from .training.preview import draw_samples

        title = f"{Path(args.model).name}: {model.nfe(args.steps)} NFE, seed {args.seed}" + (
            f", class {args.cls}" if args.cls is not None else "")
        draw_samples(model.spec, x.cpu(), title, out, max_images=args.n)
        print(f"drew {args.n} samples ({model.nfe(args.steps)} network evaluations each) in {out}")
        return 0
    arrays = {"samples": model.spec.to_user(x)}
    if labels is not None:
        arrays["labels"] = np.asarray([model.spec.class_names[i] for i in labels.tolist()])
    _write_npy(out, arrays)
    print(f"wrote {args.n} samples ({model.nfe(args.steps)} network evaluations each) to {out}: "
          f"{_described(arrays['samples'], model.spec)}")
    return 0


def _described(x: np.ndarray, spec) -> str:
    """What a samples file holds, so a user knows how to read it: dtype, shape and, for images, value range."""
    what = f"{x.dtype} {tuple(x.shape)}"
    if spec.kind != "image":
        return what
    lo, hi = spec.value_range
    return f"{what}, values {lo:g}..{hi:g}" + ("" if spec.source else " (no data given: the model's own range)")


def evaluate(args) -> int:
    from .api import evaluate as evaluate_model

    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out must end in .json, got {args.out}")
    check_folder_of(out, args.model)
    result = evaluate_model(args.model, args.data, n=args.n, steps=args.steps, seed=args.seed,
                            inception=args.inception, solver=args.solver, device=args.device)
    ckpt.atomic_write_json(out, result)
    json.dump({k: v for k, v in result.items() if not isinstance(v, (list, dict))}, sys.stdout, indent=1)
    print()
    return 0


def export(args) -> int:
    from .to_diffusers import export_student

    target = Path(args.out)
    new = not (target.is_dir() and any(target.iterdir()))  # else it holds this export already, or is refused
    out = export_student(args.model, args.out)
    remote = ", trust_remote_code=True" if (out / "pipeline.py").is_file() else ""  # the folder's own code
    print(f"{'exported to' if new else 'already exported to'} {out}: "
          f"DiffusionPipeline.from_pretrained({str(out)!r}{remote})")
    return 0


def demo(args) -> int:
    from .report.demo import run_demo

    out = run_demo(args.data, args.out, args.steps, args.config, args.overrides)
    if out is not None:
        print(f"report: {out}")
    return 0


def compare(args) -> int:
    from .report.compare import run_compare

    out = run_compare(args.data, args.methods, args.steps, args.out, args.config, args.overrides, args.jobs,
                      args.teacher)
    print(f"report: {out}")
    return 0
