"""A score-SDE (variance-exploding) teacher on MNIST, trained the way a user of score SDE trains one, distilled
through its diffusers folder.

bench/mnist_diffusers.py's recipe (AdamW, cosine schedule, EMA) on its UNet2DModel with a Gaussian Fourier time
embedding (NCSN++'s: the network is fed σ and its output divided by σ, a score), trained by denoising score matching
as score SDE's VE models are: images in [0, 1], σ = σ_min (σ_max/σ_min)^u with u uniform in [1e-5, 1], loss
|σ s(x_0 + σ ε, σ) + ε|² (the λ(σ) = σ² weighting). σ_max = 16, the largest distance between two of the 20,000
training digits (Song and Ermon's rule for it), σ_min = 0.01. Saved as a ScoreSdeVePipeline. Then, as a user would:

    python bench/mnist_ve.py --out W [--iters 4500] [--threads 1]        # W/teacher, W/mnist20k.npy
    distmatch distill --teacher W/teacher --data W/mnist20k.npy --steps K --out W/student-K --set train.iters=1000
    python bench/score_students.py W/student-K --out W/scores --inception default_1.pt --threads 1

Training resumes from its last checkpoint (every 500 iterations). The teacher's rows (Inception FID etc. of 1000
samples against the first 1000 test digits, clamped; bench/mnist.py's scoring):

    python bench/mnist_ve.py --out W --rows --inception default_1.pt [--pc-steps 100]

its own sampler (ScoreSdeVePipeline's predictor-corrector loop, two network evaluations a step; 2000 steps by
default, fewer here for a CPU), distmatch's Heun at 18 (its default) and 50 steps and its ancestral sampler
(`--solver ancestral`) at 100.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mnist import mnist_train, print_clamped_rows  # noqa: E402
from mnist_diffusers import train_recipe  # noqa: E402

SIGMA_MIN, SIGMA_MAX, EPS = 0.01, 16.0, 1e-5


def make_unet():
    """bench/mnist_diffusers.py's UNet2DModel (16 / 32 / 64 channels, attention at 7x7) with a Fourier embedding."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(16, 32, 64), norm_num_groups=8, time_embedding_type="fourier",
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def ve_loss(unet, scheduler, batch, noise, g, device):
    """Denoising score matching at σ log-uniform in [σ_min, σ_max], on images in [0, 1], weighted by σ²."""
    u = EPS + (1 - EPS) * torch.rand(len(batch), generator=g)
    sigma = (SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** u).to(device)
    x0 = (batch + 1) / 2
    score = unet(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma).sample
    return ((sigma.view(-1, 1, 1, 1) * score + noise) ** 2).mean()


def pc_sample(folder: Path, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    """ScoreSdeVePipeline's predictor-corrector loop, in [0, 1] (the stock pipeline fixes 3 channels, MNIST has 1)."""
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    sched = ScoreSdeVeScheduler.from_pretrained(folder / "scheduler")
    x = torch.randn((n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=g)
    x = x * sched.init_noise_sigma
    sched.set_timesteps(steps)
    sched.set_sigmas(steps)
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            sigma = sched.sigmas[i] * torch.ones(n)
            for _ in range(sched.config.correct_steps):
                x = sched.step_correct(unet(x, sigma).sample, x, generator=g).prev_sample
            out = sched.step_pred(unet(x, sigma).sample, t, x, generator=g)
            x, mean = out.prev_sample, out.prev_sample_mean
    return mean.clamp(0, 1)


def teacher_rows(out: Path, inception: str | None, pc_steps: int, n: int = 1000) -> None:
    from distmatch.models import load_model

    teacher = load_model(out / "teacher")
    plan = [(f"its own predictor-corrector sampler, {pc_steps} steps", (2 * pc_steps, lambda n, g: torch.cat(
                [pc_sample(out / "teacher", 250, pc_steps, g) for _ in range(n // 250)]) * 2 - 1)),
            ("distmatch Heun 18", (35, lambda n, g: teacher.sample(n, seed=0)[0].float())),
            ("distmatch Heun 50", (99, lambda n, g: teacher.sample(n, steps=50, seed=0)[0].float())),
            ("distmatch ancestral 100", (100, lambda n, g: teacher.with_solver("ancestral").sample(
                n, steps=100, seed=0)[0].float()))]
    print_clamped_rows(plan, out / "scores", n, inception)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iters", type=int, default=4500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", action="store_true", help="score the trained teacher's own rows")
    p.add_argument("--inception", default=None)
    p.add_argument("--pc-steps", type=int, default=100)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.rows:
        return teacher_rows(a.out, a.inception, a.pc_steps)
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    a.out.mkdir(parents=True, exist_ok=True)
    images = np.load(mnist_train(a.out))
    x0 = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    scheduler = ScoreSdeVeScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sampling_eps=EPS)
    assert math.isclose(scheduler.init_noise_sigma, SIGMA_MAX)
    print(train_recipe(a.out, x0, make_unet, scheduler, a.iters, every=500, about={"loss": "VE score matching"},
                       loss_fn=ve_loss, pipeline=ScoreSdeVePipeline))


if __name__ == "__main__":
    main()
