"""Where should a 1-step student of an ε-predicting DDPM start? Asked again on small teachers of two noise schedules.

On the MNIST teachers (bench/RESULTS.md) a 1-step dmd2 student that starts lower than the default
(`student.start_sigma_max=1.7` against 14.62) scored a third better. This script asks whether that holds on other
teachers: it trains small diffusers DDPM teachers on scikit-learn's 8x8 digits with diffusers' recipe (as
bench/mnist_diffusers.py does for MNIST), one per `beta_schedule`, then for each start and seed runs

    distmatch distill --teacher <out>/<schedule>/teacher --data digits --steps 1 --out S \
        --set student.start_sigma_max=X train.seed=N train.ema=0
    distmatch evaluate --model S --data digits --steps 1 --out S.json

and scores the teacher itself with its own sampler (`--solver ancestral`, 1000 steps). Scores are Fréchet distances
on the in-domain digits classifier (`distmatch evaluate`'s fallback when no Inception file is given).

    python bench/digits_vp.py --out bench/out/digits-vp [--schedules linear squaredcos_cap_v2]
        [--starts 14.62 1.7] [--seeds 0 1] [--teacher-iters 6000] [--threads 1] [--prediction v_prediction]

`--prediction v_prediction` trains the teachers on diffusers' v target instead (folders `<schedule>-v`).

Every stage resumes (teacher from its last 1000 iterations, students and scores from their folders).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mnist_diffusers import train_recipe  # noqa: E402  (the same diffusers recipe, smaller images)


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def train(out: Path, schedule: str, iters: int, prediction: str = "epsilon") -> Path:
    """diffusers' DDPM recipe on the digits train split (values 0..16 -> [-1, 1]); a DDPMPipeline folder."""
    from diffusers import DDPMScheduler

    from distmatch.data.presets import digits

    x0 = torch.from_numpy(digits("train").array).float().div(8).sub(1).unsqueeze(1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction)
    return train_recipe(out, x0, make_unet, scheduler, iters, every=1000, about={"schedule": schedule})


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distmatch", *args], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def score(model: Path, dest: Path, *extra: str) -> dict:
    if not dest.exists():
        cli("evaluate", "--model", str(model), "--data", "digits", "--out", str(dest), *extra)
    return json.loads(dest.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schedules", nargs="+", default=["linear", "squaredcos_cap_v2"])
    p.add_argument("--starts", nargs="+", type=float, default=[14.62, 1.7])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--teacher-iters", type=int, default=6000)
    p.add_argument("--prediction", default="epsilon", choices=["epsilon", "v_prediction"],
                   help="the teachers' prediction type (v_prediction: folders <schedule>-v)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="more distill settings for every student")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    rows = []
    for schedule in a.schedules:
        base = a.out / (schedule + ("-v" if a.prediction == "v_prediction" else ""))
        teacher = train(base, schedule, a.teacher_iters, a.prediction)
        for start in a.starts:
            for seed in a.seeds:
                run = base / f"start{start:g}-seed{seed}"
                if not (run / "model.safetensors").exists() and not (run / "model").exists():
                    cli("distill", "--teacher", str(teacher), "--data", "digits", "--steps", "1", "--out", str(run),
                        "--set", f"student.start_sigma_max={start}", f"train.seed={seed}",
                        "train.ema=0", *a.set)  # as its table was made: no EMA, DMD2's choice
                rows.append((schedule, f"1-step dmd2, start σ <= {start:g}", seed,
                             score(run, base / f"start{start:g}-seed{seed}.json", "--steps", "1")))
        own = score(teacher, base / "teacher-ancestral-1000.json", "--solver", "ancestral", "--steps", "1000")
        rows.append((schedule, "teacher, ancestral 1000", "", own))
    print("| schedule | model | seed | FD | x teacher |\n|---|---|---|---|---|")
    fd_of = {s: r["fd"] for s, name, _, r in rows if name.startswith("teacher")}
    for schedule, name, seed, r in rows:
        print(f"| {schedule} | {name} | {seed} | {r['fd']:.3f} | {r['fd'] / fd_of[schedule]:.2f} |")


if __name__ == "__main__":
    main()
