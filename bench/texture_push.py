"""Which way DMD2's distribution-matching step moves a K-step student's faint background texture, level by level.

On N samples x of the saved student (EMA weights, seed 0, clamped to [-1, 1]), noised to x_t = x + σ ε at teacher
timesteps t: the mean move of the real score (x̂_real - x) and of the critic (x̂_fake - x) on the faint pixels
(grey, in (-0.9, -0.5)), and the DM step's direction x̂_real - x̂_fake (the student moves along it) on the faint,
the black (<= -0.99) and the ink (> 0) pixels. Negative = darker. Prints a markdown table per run.

    python bench/texture_push.py RUN... [--teacher DIR] [--n 128] [--t 5 15 30 60 100 200 400 700]
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


def moves(x, real, fake, sigma: float) -> dict:
    """The real score's, the critic's and the DM step's mean moves per kind of pixel at one level."""
    faint, black, ink = (x > -0.9) & (x < -0.5), x <= -0.99, x > 0
    s = torch.full((len(x),), sigma)
    with torch.no_grad():
        x_t = x + sigma * torch.randn_like(x)
        r, f = real(x_t, s).float(), fake(x_t, s).float()
    return {"real": (r - x)[faint].mean(), "fake": (f - x)[faint].mean(), "faint": (r - f)[faint].mean(),
            "black": (r - f)[black].mean(), "ink": (r - f)[ink].mean()}


def main() -> None:
    from dm_levels import trained_networks

    from distmatch.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="K-step distmatch run folders of a VP teacher")
    ap.add_argument("--teacher", default=None, help="the teacher (default: the one each run names)")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--t", type=int, nargs="*", default=[5, 15, 30, 60, 100, 200, 400, 700])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        teacher = load_model(args.teacher or json.loads((run / "run.json").read_text())["teacher"])
        real = teacher.denoiser.eval()
        _, fake = trained_networks(run, real)
        x = load_model(run).sample(args.n, seed=0)[0].float().clamp(-1, 1)
        torch.manual_seed(1)
        print(f"\n{run}: faint {((x > -0.9) & (x < -0.5)).float().mean():.3f}, black {(x <= -0.99).float().mean():.3f}"
              f"\n\n| t | σ | real score, faint | critic, faint | DM step, faint | DM step, black | DM step, ink |"
              "\n|---|---|---|---|---|---|---|")
        for t in args.t:
            sigma = float(teacher.schedule.grid[t])
            m = moves(x, real, fake, sigma)
            print(f"| {t} | {sigma:.3f} | " + " | ".join(f"{float(v):+.3f}" for v in m.values()) + " |")


if __name__ == "__main__":
    main()
