"""Where DMD2's distribution-matching gradient carries signal: per teacher timestep, its size and how well two
independent noise draws agree, on a distilled 1-step student of a VP teacher (its EMA generator and its critic).

g = (x̂_fake - x̂_real) / mean |x - x̂_real| at x_t = x + σ ε. A level whose two draws point the same way (cosine
near 1) and along the gradient of the middle levels pushes the student somewhere; one whose draws are orthogonal
only adds noise to its update. Prints a markdown table.

    python bench/dm_levels.py bench/out/mnist-diffusers/student-1 [--teacher DIR] [--t 20 100 ... 980]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MIDDLE = (100, 200, 300, 400, 500, 600)


def trained_networks(run: Path, real):
    """The run's EMA generator and critic, read from its last checkpoint into copies of the teacher's denoiser."""
    from distmatch import checkpoint as ckpt

    tensors = ckpt.load_tensors(run / "checkpoint.safetensors")[0]

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    gen, fake = copy.deepcopy(real), copy.deepcopy(real)
    gen.net.load_state_dict(part("module/ema/net."))
    fake.load_state_dict(part("module/critic/denoiser."))
    return gen.eval(), fake.eval()


def main():
    from distmatch.methods.losses import dm_gradient
    from distmatch.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a 1-step distmatch run folder of a VP teacher (its checkpoint)")
    ap.add_argument("--teacher", default=None, help="the teacher (default: the one the run names)")
    ap.add_argument("--t", type=int, nargs="*", default=[20, 100, 200, 300, 400, 500, 600, 700, 726, 800, 900, 980])
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = json.loads((args.run / "run.json").read_text())
    teacher = load_model(args.teacher or info["teacher"])
    real = teacher.denoiser.eval()
    gen, fake = trained_networks(args.run, real)
    grid, s0, n = teacher.schedule.grid, info["levels"][0], args.n
    torch.manual_seed(0)
    with torch.no_grad():
        x = gen(torch.randn((n,) + tuple(teacher.spec.shape)) * (1 + s0 ** 2) ** 0.5, torch.full((n,), s0)).float()
        draws = {}
        for t in sorted(set(args.t) | set(MIDDLE)):
            s = torch.full((n,), float(grid[t]))
            draws[t] = []
            for _ in range(2):
                x_t = x + s.view(-1, 1, 1, 1) * torch.randn_like(x)
                draws[t].append(dm_gradient(x, real(x_t, s), fake(x_t, s)).flatten(1))
    middle = sum(g for t in MIDDLE for g in draws[t]) / (2 * len(MIDDLE))
    print(f"student level σ = {s0:.2f}; {n} samples\n")
    print("| t | σ | mean abs g | cos(draw 1, draw 2) | cos(g, middle levels' g) |\n|---|---|---|---|---|")
    for t in args.t:
        g1, g2 = draws[t]
        print(f"| {t} | {float(grid[t]):.2f} | {g1.abs().mean():.3f} | {F.cosine_similarity(g1, g2).mean():+.3f} "
              f"| {F.cosine_similarity(g1, middle).mean():+.3f} |")


if __name__ == "__main__":
    main()
