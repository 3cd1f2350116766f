"""Where should a K-step student of a flow-matching teacher start its last step? Asked on a small diffusers teacher.

A K-step student of a flow teacher takes the stock FlowMatchEulerDiscreteScheduler's K levels, whose last is the
scheduler's lowest training level (s = 0.001 at shift 1, as few-step flow models ship): its last step starts from
an almost clean sample. `student.flow_terminal=X` ends the levels at s = shift(X) instead (exported with the
scheduler's `shift_terminal`; X = 1/K is DMD2's t = T/K - 1 read as flow time). This script trains a diffusers
UNet2DModel with a flow-matching objective (the velocity ε - x_0 at s = t/1000, t uniform over the scheduler's
training timesteps, as diffusers' SD3 scripts do without weighting) on scikit-learn's 8x8 digits, then for each K
and level choice runs

    distmatch distill --teacher <out>/teacher --data digits --steps K --out S [--set student.flow_terminal=1/K]
    distmatch evaluate --model S --data digits --out S.json

and scores the teacher with distmatch's Heun (its default) and Euler at 100 steps. Scores are Fréchet distances on
the in-domain digits classifier (`distmatch evaluate`'s fallback when no Inception file is given).

    python bench/digits_flow.py --out bench/out/digits-flow [--steps 1 2] [--seeds 0] [--levels stock terminal]
        [--teacher-iters 6000] [--threads 1]

Every stage resumes (the teacher from its last 1000 iterations, students and scores from their folders).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from digits_vp import cli, make_unet, score  # noqa: E402  (the same small UNet2DModel, commands and scores)
from mnist_diffusers import train_recipe  # noqa: E402  (diffusers' recipe, here with the flow-matching loss)


def flow_loss(unet, scheduler, batch, noise, g, device):
    """Flow matching: the velocity ε - x_0 at x_s = (1-s) x_0 + s ε, s one of the scheduler's training levels."""
    index = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=g)
    s = scheduler.sigmas[index].view(-1, 1, 1, 1).to(device)
    return F.mse_loss(unet((1 - s) * batch + s * noise, scheduler.timesteps[index].to(device)).sample, noise - batch)


def train(out: Path, iters: int) -> Path:
    """diffusers' recipe with the flow-matching loss on the digits train split (0..16 -> [-1, 1]), resumable; a
    folder of the EMA weights with a FlowMatchEulerDiscreteScheduler (shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from distmatch.data.presets import digits

    x0 = torch.from_numpy(digits("train").array).float().div(8).sub(1).unsqueeze(1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return train_recipe(out, x0, make_unet, scheduler, iters, every=1000, about={"loss": "flow matching"},
                        loss_fn=flow_loss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--levels", nargs="+", default=["stock", "terminal"], help="which K-step levels to run")
    p.add_argument("--teacher-iters", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    teacher = train(a.out, a.teacher_iters)
    rows = [("teacher, Heun 18 steps", score(teacher, a.out / "teacher-heun.json")),
            ("teacher, Euler 100 steps", score(teacher, a.out / "teacher-euler100.json", "--solver", "euler",
                                               "--steps", "100"))]
    for k in a.steps:
        for levels in (["stock"] if k == 1 else a.levels):
            for seed in a.seeds:
                run = a.out / f"k{k}-{levels}-seed{seed}"
                given = [f"student.flow_terminal={1 / k}"] if levels == "terminal" else []
                if not (run / "model.safetensors").exists():
                    cli("distill", "--teacher", str(teacher), "--data", "digits", "--steps", str(k), "--out",
                        str(run), "--set", f"train.seed={seed}", *given)
                name = f"dmd2, {k} step{'s' if k > 1 else ''}, " + (
                    "from s = 1" if k == 1 else "last level s = shift(1/K)" if levels == "terminal" else
                    "the stock scheduler's levels") + f", seed {seed}"
                rows.append((name, score(run, a.out / f"k{k}-{levels}-seed{seed}.json")))
    base = rows[0][1]["fd"]
    print("| model | NFE | FD | x teacher (Heun) | KID x1e3 | precision | recall |\n|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['nfe']} | {r['fd']:.3f} | {r['fd'] / base:.2f} | {1e3 * r['kid']:.1f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} |")


if __name__ == "__main__":
    main()
