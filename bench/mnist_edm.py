"""An EDM teacher on MNIST, trained the way a user of diffusers' EDM schedulers trains one, distilled through its
folder (unet/ and scheduler/: diffusers has no stock pipeline for an EDM-preconditioned UNet2DModel).

bench/mnist_diffusers.py's recipe (AdamW, cosine schedule, EMA) and UNet2DModel (687k parameters), trained with
EDM's loss (Karras et al. 2022): σ = exp(P_mean + P_std n), n ~ N(0, 1), P_mean = -1.2, P_std = 1.2; the network
F is run through EDMEulerScheduler's own preconditioning, D = c_skip x + c_out F(c_in x, ln(σ)/4), and the loss is
λ(σ) |D - x_0|² with λ = (σ² + σ_d²) / (σ σ_d)², σ_d = 0.5. Saved as unet/ and an EDMEulerScheduler (σ in
[0.002, 80]). Then, as a user would:

    python bench/mnist_edm.py --out W [--iters 5000] [--threads 2]     # W/teacher, W/mnist20k.npy
    distmatch distill --teacher W/teacher --data W/mnist20k.npy --steps K --out W/student-K --set train.iters=1000
    python bench/score_students.py W/student-K --out W/scores --inception default_1.pt --threads 1

Training resumes from its last checkpoint (every 500 iterations). The teacher's rows (Inception FID etc. of 1000
samples against the first 1000 test digits, clamped; bench/mnist.py's scoring):

    python bench/mnist_edm.py --out W --rows --inception default_1.pt

its own sampler (EDMEulerScheduler's loop, run by hand, at 50 steps), distmatch's Heun at 18 (its default, EDM's
35 evaluations) and 50 steps, and Euler at 1 / 2 / 4 steps (the students' evaluations).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mnist import mnist_train, print_clamped_rows  # noqa: E402
from mnist_diffusers import make_unet, train_recipe  # noqa: E402

P_MEAN, P_STD = -1.2, 1.2


def edm_loss(unet, scheduler, batch, noise, g, device):
    """EDM's denoising loss through the scheduler's preconditioning (c_in, c_noise, c_skip, c_out)."""
    sigma = (P_MEAN + P_STD * torch.randn(len(batch), generator=g)).exp().to(device)
    s = sigma.view(-1, 1, 1, 1)
    x = batch + s * noise
    out = unet(scheduler.precondition_inputs(x, s), scheduler.precondition_noise(sigma)).sample
    d = scheduler.precondition_outputs(x, out, s)
    sd = scheduler.config.sigma_data
    return ((s ** 2 + sd ** 2) / (s * sd) ** 2 * (d - batch) ** 2).mean()


class Components:
    """unet/ and scheduler/ side by side, what train_recipe saves in place of a pipeline."""

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler

    def save_pretrained(self, path: Path) -> None:
        self.unet.save_pretrained(Path(path) / "unet")
        self.scheduler.save_pretrained(Path(path) / "scheduler")


def euler_sample(folder: Path, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    """EDMEulerScheduler's loop, as a hand-written pipeline would run it."""
    from diffusers import EDMEulerScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    sched = EDMEulerScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(steps)
    c = unet.config
    x = torch.randn((n, c.in_channels, c.sample_size, c.sample_size), generator=g) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t.expand(n)).sample
            x = sched.step(out, t, x).prev_sample
    return x


def teacher_rows(out: Path, inception: str | None, n: int = 1000) -> None:
    from distmatch.models import load_model

    teacher = load_model(out / "teacher")
    euler = teacher.with_solver("euler")
    plan = [("its own EDMEulerScheduler loop, 50 steps", (50, lambda n, g: torch.cat(
                [euler_sample(out / "teacher", 250, 50, g) for _ in range(n // 250)]))),
            ("distmatch Heun 18", (35, lambda n, g: teacher.sample(n, seed=0)[0].float())),
            ("distmatch Heun 50", (99, lambda n, g: teacher.sample(n, steps=50, seed=0)[0].float()))]
    plan += [(f"distmatch Euler {k}", (k, lambda n, g, k=k: euler.sample(n, steps=k, seed=0)[0].float()))
             for k in (1, 2, 4)]
    print_clamped_rows(plan, out / "scores", n, inception)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", action="store_true", help="score the trained teacher's own rows")
    p.add_argument("--inception", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.rows:
        return teacher_rows(a.out, a.inception)
    from diffusers import EDMEulerScheduler

    if (a.out / "teacher" / "unet").exists():
        return print(a.out / "teacher")
    a.out.mkdir(parents=True, exist_ok=True)
    x0 = torch.from_numpy(np.load(mnist_train(a.out))).float().div(127.5).sub(1).unsqueeze(1)
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    print(train_recipe(a.out, x0, make_unet, scheduler, a.iters, every=500, loss_fn=edm_loss, pipeline=Components,
                       about={"loss": "EDM", "p_mean": P_MEAN, "p_std": P_STD}))


if __name__ == "__main__":
    main()
