"""What a 4-step student of the real MNIST DDPM regresses on, and how its ground drifts.

    python bench/mnist_pairs.py pairs --out O --inception default_1.pt --steps 18 50 \
        [--cached RUN/dmd_pairs.safetensors] [--start-t 723]
    python bench/mnist_pairs.py ground SAMPLES.pt [SAMPLES.pt ...]

`pairs`: Inception FID / KID / precision / recall of the teacher's ODE pairs (pairs.make_pairs: Heun at each step
count, from the student's first level, t 723 = σ 14.20), and of a run's cached pairs, stretched and scored as
bench/mnist.py scores its rows (N = 1000). `ground`: per sample file of bench/mnist.py (its rows' `samples/*.pt`),
the median over images of each image's median value, and the spread of its ground (std of the pixels within 0.3
of that median), over the first 200 images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

def pair_rows(args) -> None:
    from distmatch import checkpoint as ckpt
    from distmatch.eval.inception import inception_path
    from distmatch.methods.pairs import make_pairs
    from mnist import SHARED, score_rows
    from mnist_ddpm import ALPHAS_CUMPROD
    from throughput import mnist_teacher

    teacher = mnist_teacher(SHARED).loaded
    a = float(ALPHAS_CUMPROD[args.start_t])
    sigma_max = ((1 - a) / a) ** 0.5  # the VP level t in the library's σ-space
    plan = []
    if args.cached:
        tensors, meta = ckpt.load_tensors(args.cached)
        plan.append((f"cached pairs, {meta['steps']} {meta['solver']} steps",
                     (2 * meta["steps"] - 1, lambda n, g, y=tensors["sample"]: y[:n])))
    for s in args.steps:
        def sample(n, g, s=s):
            return make_pairs(teacher.denoiser, n, (1, 28, 28), s, "heun", sigma_max, [], 0, "cpu",
                              sigma_min=teacher.schedule.sigma_min, progress=True)["sample"]
        plan.append((f"pairs, heun {s} steps from sigma {sigma_max:.2f}", (2 * s - 1, sample)))
    for r in score_rows(plan, Path(args.out), args.n, inception_path(args.inception)):
        print(f"{r['name']}: FID {r['fd']:.2f}, KID {r['kid'] * 1e3:.1f}e-3, P/R {r['precision']} / {r['recall']}")


def ground(paths: list[str]) -> None:
    for p in paths:
        x = torch.load(p)[0][:200].flatten(1).float()
        med = x.median(dim=1).values
        spread = torch.stack([r[(r - m).abs() < 0.3].std() for r, m in zip(x, med)])
        print(f"{p}: median value {med.median():.2f}, ground spread {spread.mean():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    pa = sub.add_parser("pairs")
    pa.add_argument("--out", required=True)
    pa.add_argument("--inception", default=None)
    pa.add_argument("--n", type=int, default=1000)
    pa.add_argument("--steps", type=int, nargs="*", default=[18, 50])
    pa.add_argument("--start-t", type=int, default=723, help="the student's first timestep")
    pa.add_argument("--cached", default=None)
    pa.add_argument("--threads", type=int, default=1)
    gr = sub.add_parser("ground")
    gr.add_argument("samples", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1))
    pair_rows(args) if args.cmd == "pairs" else ground(args.samples)


if __name__ == "__main__":
    main()
