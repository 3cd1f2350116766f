"""A flow-matching teacher on MNIST, trained the way a diffusers user trains one, for distillation at the defaults.

bench/mnist_diffusers.py's recipe and UNet2DModel (687k parameters) with bench/digits_flow.py's flow-matching loss
(the velocity ε - x_0 at x_s = (1-s) x_0 + s ε, s = t/1000 with t uniform over the scheduler's 1000 training
timesteps, the network fed t) under FlowMatchEulerDiscreteScheduler(1000, shift 1). Then, as a user would:

    python bench/mnist_flow.py --out W [--iters 4500] [--threads 1]        # W/teacher, W/mnist20k.npy
    distmatch distill --teacher W/teacher --data W/mnist20k.npy --steps K --out W/student-K --set train.iters=1000
    python bench/score_students.py W/student-K --out W/scores --inception default_1.pt --threads 1

Training resumes from its last checkpoint (every 500 iterations).
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

from digits_flow import flow_loss  # noqa: E402
from mnist import mnist_train  # noqa: E402
from mnist_diffusers import make_unet, train_recipe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iters", type=int, default=4500)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import FlowMatchEulerDiscreteScheduler

    a.out.mkdir(parents=True, exist_ok=True)
    images = np.load(mnist_train(a.out))
    x0 = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    print(train_recipe(a.out, x0, make_unet, scheduler, a.iters, every=500, about={"loss": "flow matching"},
                       loss_fn=flow_loss))


if __name__ == "__main__":
    main()
