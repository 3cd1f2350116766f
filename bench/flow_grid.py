"""Which noise grid suits distmatch's Heun on a flow-matching teacher: its Karras grid in σ = s/(1-s) (the default),
or a grid uniform in the flow time s, as flow schedulers space their steps? Inception FID of N samples (seed 0,
clamped) against the first N MNIST test digits, like bench/score_students.py.

    python bench/flow_grid.py W/teacher --out W/grid-scores --inception default_1.pt [--steps 18] [--n 1000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def uniform_in_s(steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """`steps` levels evenly spaced in s between the grid's ends, as σ, then 0."""
    s_max, s_min = sigma_max / (1 + sigma_max), sigma_min / (1 + sigma_min)
    return [float(s / (1 - s)) for s in torch.linspace(s_max, s_min, steps)] + [0.0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("teacher", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--inception", required=True)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import distmatch.samplers as samplers
    from distmatch.models import load_model
    from mnist import score_rows

    teacher, karras = load_model(a.teacher), samplers.teacher_grid

    def heun_on(grid):
        def sample(n, g):
            samplers.teacher_grid = grid  # the solvers read the grid from the module at each call
            try:
                return teacher.sample(n, a.steps, seed=0)[0].float()
            finally:
                samplers.teacher_grid = karras
        return sample

    nfe = 2 * a.steps - 1
    rows = [(f"Heun {a.steps}, Karras grid (default)", (nfe, heun_on(karras))),
            (f"Heun {a.steps}, grid uniform in s", (nfe, heun_on(uniform_in_s)))]
    for r in score_rows(rows, a.out, a.n, Path(a.inception), prepare=lambda x: x.clamp(-1, 1)):
        print({k: r[k] for k in ("name", "nfe", "fd", "kid", "precision", "recall")}, flush=True)


if __name__ == "__main__":
    main()
