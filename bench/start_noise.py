"""Does a student's speckle follow its own input noise? (1-step students of ε-predicting teachers)

A student that keeps its teacher's ε-prediction turns its input x = σ_0 ε into x̂_0 = x - σ_0 ε̂, so whatever part of
ε it fails to predict lands in the sample multiplied by σ_0 (14.5 at the default start of a linear-β DDPM's
student). On N samples of each saved student (EMA weights, seed 0), this prints the correlation of the sample's
high-passed part (the image minus its 3x3 mean) with the noise it was drawn from, and the high-passed part's
std. A student that cancels its noise has correlation 0.

    python bench/start_noise.py RUN... [--n 64]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def high_pass(x: torch.Tensor) -> torch.Tensor:
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    from distmatch.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | levels σ | corr(high-passed sample, noise) | high-passed std |")
    print("|---|---|---|---|")
    for run in args.runs:
        model = load_model(run)
        x, labels = model.sample(args.n, seed=0)
        if labels is not None:
            raise SystemExit(f"{run}: a class-conditional student draws its labels from the same generator first")
        z = torch.randn((args.n,) + tuple(model.spec.shape), generator=torch.Generator().manual_seed(0))
        sigmas = " / ".join(f"{s:.2f}" for s in model.config["sigmas"])
        hp = high_pass(x)
        print(f"| {Path(run).name} | {sigmas} | {correlation(hp, z):+.3f} | {float(hp.std()):.3f} |")


if __name__ == "__main__":
    main()
