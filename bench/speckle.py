"""Where a student's Inception FID on MNIST goes: its digits, or faint noise on the background.

For every row scored by bench/mnist.py / mnist_diffusers_gpu.py (<out>/samples/*.pt, images in [-1, 1]): the
share of pixels at the data's black (-1), the share of faint grey pixels in (-0.9, -0.5) (MNIST's anti-aliased
edges put 2.5 % there), the share of ink (> 0), and, with --inception, FID / KID / precision / recall against the
first N MNIST test digits after every pixel below a threshold is set to -1 (the background cleaned; a diagnosis,
not a sampler: nothing in distmatch does this to a sample).

    python bench/speckle.py bench/out/mnist-gpu --inception default_1.pt [--below -0.5] [--rows k4 teacher] \
        [--start W/teacher]

--start adds the students at iteration 0: the teacher's network in the K-step students' exported scheduler
(LCMScheduler over the first t_0 + 1 steps, K = 1 and 4), the same N and seed (pixel shares only).
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


def pixel_shares(x: torch.Tensor) -> dict:
    x = x.clamp(-1, 1)
    return {"black": float((x <= -0.999).float().mean()), "faint": float(((x > -0.9) & (x < -0.5)).float().mean()),
            "ink": float((x > 0).float().mean())}


def at_start(teacher: Path, k: int, n: int) -> torch.Tensor:
    """n images of the teacher's network run in the K-step student's exported scheduler (the student before
    training), in [-1, 1]."""
    from diffusers import DDPMPipeline, LCMScheduler

    from distmatch.to_diffusers import betas_from

    pipe = DDPMPipeline.from_pretrained(teacher)
    pipe.set_progress_bar_config(disable=True)
    top = {1: 727, 4: 724}[k]  # t_0 + 1 for the default start (student.start_sigma_max) of a linear-β teacher
    betas = betas_from(pipe.scheduler.alphas_cumprod[:top])
    pipe.scheduler = LCMScheduler(num_train_timesteps=top, trained_betas=betas, original_inference_steps=k,
                                  clip_sample=False)
    images = pipe(batch_size=n, num_inference_steps=k, generator=torch.manual_seed(0), output_type="pt").images
    return images * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="a scored folder: <out>/samples/*.pt and <out>/cache")
    ap.add_argument("--inception", default=None)
    ap.add_argument("--below", type=float, default=-0.5, help="pixels below this are set to -1 before scoring")
    ap.add_argument("--rows", nargs="*", default=None, help="only rows whose file name contains one of these")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--start", default=None, help="the teacher's folder: add the K = 1, 4 students at iteration 0")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from distmatch.data import from_arrays
    from mnist import mnist_test

    out = Path(args.out)
    files = sorted(p for p in (out / "samples").glob("*.pt")
                   if not args.rows or any(r in p.name for r in args.rows))
    n = len(torch.load(files[0])[0]) if files else 0
    real = from_arrays(mnist_test()[:n]).x.float()
    print(json.dumps({"row": "MNIST test", **pixel_shares(real)}))
    for path in files:
        x = torch.load(path)[0].float().clamp(-1, 1)
        row = {"row": path.stem, **pixel_shares(x)}
        if args.inception:
            from distmatch.eval.inception import inception_metrics, inception_path

            cleaned = torch.where(x < args.below, torch.full_like(x, -1.0), x)
            m = inception_metrics(cleaned, from_arrays(mnist_test()[:n]), inception_path(args.inception),
                                  out / "cache")
            row.update({f"cleaned_{k}": m[k] for k in ("fd", "kid", "precision", "recall")})
        print(json.dumps(row), flush=True)
    for k in (1, 4) if args.start else ():
        print(json.dumps({"row": f"teacher in the {k}-step student's scheduler (iteration 0)",
                          **pixel_shares(at_start(Path(args.start), k, n))}), flush=True)


if __name__ == "__main__":
    main()
