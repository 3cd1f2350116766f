"""What a VP ε teacher's x̂_0 looks like on pure noise at each candidate start level of a 1-step student.

x̂_0 = (x_t - √(1-ᾱ) ε̂) / √ᾱ multiplies ε̂'s error by 1/√ᾱ = √(1+σ²): a student initialised from the teacher
begins as this x̂_0. Prints, per timestep, σ, the mean per-pixel std over 64 noises, the overall std and the
value range.

    python bench/x0_at_start.py bench/out/mnist-diffusers/teacher [--t 999 900 800 726 600 500 400]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main():
    from distmatch.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("teacher", help="a diffusers DDPM folder or a distmatch teacher of a VP ε network")
    ap.add_argument("--t", type=int, nargs="*", default=[999, 900, 800, 726, 600, 500, 400])
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = load_model(args.teacher)
    grid = teacher.schedule.grid
    z = torch.randn((args.n,) + tuple(teacher.spec.shape), generator=torch.Generator().manual_seed(0))
    print("| t | σ | per-pixel std over noises | std | range |\n|---|---|---|---|---|")
    for t in args.t:
        s = float(grid[t])
        with torch.no_grad():
            x = teacher.denoiser(z * (1 + s * s) ** 0.5, torch.full((args.n,), s))
        print(f"| {t} | {s:.2f} | {x.std(0).mean():.3f} | {x.std():.3f} | {x.min():.1f} .. {x.max():.1f} |")


if __name__ == "__main__":
    main()
