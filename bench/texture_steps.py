"""Where a K-step student's faint background texture arises: step by step, and in its last step alone.

For each student run folder: the pixel shares (bench/speckle.py: black, faint grey in (-0.9, -0.5), ink) of every
step's output x̂_0 along its own sampler, and of its last step applied to real images noised to that step's level;
beside them the data and the teacher's denoiser on the same noised images (at the last level, and at two lower
ones), and the samples of the saved student (EMA weights) against those of the raw generator in its last
checkpoint. N images, seed 0.

    python bench/texture_steps.py --teacher W/teacher --data mnist20k.npy RUN... [--n 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def shares(x: torch.Tensor) -> dict:
    from speckle import pixel_shares

    return {k: round(v, 3) for k, v in pixel_shares(x).items()}


def full(n: int, sigma: float) -> torch.Tensor:
    return torch.full((n,), float(sigma))


@torch.no_grad()
def student_rows(name: str, denoiser, sigmas: list[float], input_scale: float, real: torch.Tensor) -> list[dict]:
    n, g = len(real), torch.Generator().manual_seed(0)
    x = torch.randn(real.shape, generator=g) * input_scale
    rows = []
    for k, s in enumerate(sigmas):
        x0 = denoiser(x, full(n, s))
        rows.append({"row": f"{name}: step {k + 1} of {len(sigmas)} (from σ {s:.2f})", **shares(x0)})
        if k + 1 < len(sigmas):
            x = x0 + sigmas[k + 1] * torch.randn(x0.shape, generator=g)
    noised = real + sigmas[-1] * torch.randn(real.shape, generator=g)
    rows.append({"row": f"{name}: last step on real images noised to σ {sigmas[-1]:.2f}",
                 **shares(denoiser(noised, full(n, sigmas[-1])))})
    return rows


def ema_and_raw(run: Path, model, n: int) -> list[dict]:
    """The saved student (its EMA weights) and the raw generator of its last checkpoint, sampled alike."""
    from distmatch import checkpoint as ckpt

    rows = [{"row": f"{run.name}: samples, EMA weights (the saved student)", **shares(model.sample(n)[0])}]
    model.denoiser.load_state_dict(ckpt.module_from_tensors("gen", ckpt.load_tensors(run / ckpt.CHECKPOINT)[0]))
    rows.append({"row": f"{run.name}: samples, raw generator (last checkpoint)", **shares(model.sample(n)[0])})
    return rows


@torch.no_grad()
def teacher_rows(teacher: Path, real: torch.Tensor, levels: list[float]) -> list[dict]:
    from distmatch.models import load_model

    t, g = load_model(teacher), torch.Generator().manual_seed(0)
    return [{"row": f"teacher's denoiser on real images noised to σ {s:.2f}",
             **shares(t.denoiser(real + s * torch.randn(real.shape, generator=g), full(len(real), s)))}
            for s in levels]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--teacher", required=True, type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from distmatch.data import load_data
    from distmatch.models import load_model

    real = load_data(args.data).x[:args.n].float()
    print(json.dumps({"row": "data", **shares(real)}))
    first = load_model(args.runs[0])
    sigmas, scale = first.config["sigmas"], first.schedule.input_scale(first.config["sigmas"][0])
    rows = teacher_rows(args.teacher, real, [sigmas[-1], sigmas[-1] / 2, sigmas[-1] / 4])
    # every student starts as the teacher's network on its levels: the iteration-0 student
    rows += student_rows("iteration 0", load_model(args.teacher).denoiser, sigmas, scale, real)
    for run in args.runs:
        m = load_model(run)
        rows += student_rows(run.name, m.denoiser, m.config["sigmas"],
                             m.schedule.input_scale(m.config["sigmas"][0]), real)
        rows += ema_and_raw(run, m, len(real))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
