"""A teacher trained the way a diffusers user trains one, then distilled, exported and used with diffusers alone.

diffusers' standard unconditional DDPM recipe (examples/unconditional_image_generation/train_unconditional.py):
a UNet2DModel predicting ε under DDPMScheduler(1000 steps, linear β), MSE on the noise, AdamW (lr 1e-4, betas
0.95 / 0.999, weight decay 1e-6), cosine schedule after 500 warm-up steps, gradient norm clipped to 1, EMA of the
weights (inv_gamma 1, power 3/4, max decay 0.9999) saved as the pipeline. Changed for a CPU and 28x28 digits: a small
UNet (16 / 32 / 64 channels, one ResNet block per level, attention at 7x7: 687k parameters, the size of the real
MNIST DDPM's 607k) and batch 64. Then, as a user would:

    distmatch distill --teacher <out>/teacher --data <out>/mnist20k.npy --steps K --out <out>/student-K
    distmatch export --model <out>/student-K --out <out>/export-K

and each export is sampled by `DiffusionPipeline.from_pretrained` in a fresh process in which distmatch cannot be
imported. Rows, scored like bench/mnist.py (Inception FID / KID, 1000 samples vs the MNIST test set): the teacher's
own DDPMPipeline at 1000 and 50 steps, the exported students, the teacher in each student's exported scheduler (the
student at iteration 0: the same K steps), distmatch's Heun, ancestral 18 / 50 and Euler 1 / 2 / 4 on the teacher
folder (x̂_0 clipped, as the folder's scheduler says).

    python bench/mnist_diffusers.py --out bench/out/mnist-diffusers --inception /path/to/default_1.pt
        [--train-iters 10000] [--steps 1 4] [--n 1000]

Every stage resumes: training from its last checkpoint (every 500 iterations), students from theirs, rows from
their saved samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

RECIPE = dict(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8, warmup=500, clip=1.0, ema_inv_gamma=1.0,
              ema_power=0.75, ema_max_decay=0.9999, batch=64)


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(16, 32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train(out: Path, images: np.ndarray, iters: int, device: str = "cpu") -> Path:
    """diffusers' DDPM recipe on `images` (uint8 N x 28 x 28); returns the DDPMPipeline folder of the EMA weights."""
    from diffusers import DDPMScheduler

    x0 = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    return train_recipe(out, x0, make_unet, DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"), iters,
                        device, every=500)


def ddpm_loss(unet, scheduler, batch, noise, g, device):
    """DDPM's loss at a timestep drawn uniformly from the scheduler's, on the target its `prediction_type` names
    (ε, or v = √ᾱ ε - √(1-ᾱ) x_0), as diffusers' train_unconditional.py chooses it."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=g).to(device)
    target = scheduler.get_velocity(batch, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    return F.mse_loss(unet(scheduler.add_noise(batch, noise, t), t).sample, target)


def train_recipe(out: Path, x0: torch.Tensor, make, scheduler, iters: int, device: str = "cpu", every: int = 500,
                 about: dict | None = None, loss_fn=ddpm_loss, pipeline=None) -> Path:
    """diffusers' DDPM recipe: the network `make()` trained on images `x0` in [-1, 1] under `scheduler` with
    `loss_fn` (DDPM's by default), resumable from a state saved every `every` iterations; the pipeline folder
    (`pipeline`, DDPMPipeline by default) of the EMA weights (`about`: more to record in its train.json). The draws come from CPU generators on any
    device, so a run's batches do not depend on where it trains."""
    from diffusers import DDPMPipeline
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    folder = out / "teacher"
    if (folder / "model_index.json").exists():
        return folder
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # pin the random start: with the per-iteration draws, a rerun here trains the same net
    unet = make().to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=RECIPE["lr"], betas=RECIPE["betas"],
                            weight_decay=RECIPE["weight_decay"], eps=RECIPE["eps"])
    lr = get_scheduler("cosine", optimizer=opt, num_warmup_steps=RECIPE["warmup"], num_training_steps=iters)
    ema = EMAModel(unet.parameters(), decay=RECIPE["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=RECIPE["ema_inv_gamma"], power=RECIPE["ema_power"])
    state, it, seconds = out / "train-state.pt", 0, 0.0
    if state.exists():
        s = torch.load(state, weights_only=False, map_location=device)
        unet.load_state_dict(s["unet"]), opt.load_state_dict(s["opt"]), lr.load_state_dict(s["lr"])
        ema.load_state_dict(s["ema"])
        it, seconds = s["it"], s["seconds"]
    unet.train()
    t0 = time.perf_counter() - seconds
    for it in tqdm(range(it, iters), initial=it, total=iters, desc="training the diffusers teacher"):
        g = torch.Generator().manual_seed(it)  # the draws of an iteration depend on its number only: exact resume
        batch = x0[torch.randint(len(x0), (RECIPE["batch"],), generator=g)]
        noise = torch.randn(batch.shape, generator=g)
        loss = loss_fn(unet, scheduler, batch.to(device), noise.to(device), g, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), RECIPE["clip"])
        opt.step(), lr.step(), opt.zero_grad()
        ema.step(unet.parameters())
        if (it + 1) % every == 0 or it + 1 == iters:
            tmp = state.with_suffix(".tmp")
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "lr": lr.state_dict(),
                        "ema": ema.state_dict(), "it": it + 1, "seconds": time.perf_counter() - t0}, tmp)
            os.replace(tmp, state)
    ema.copy_to(unet.parameters())
    tmp = out / "teacher.tmp"
    (pipeline or DDPMPipeline)(unet=unet.eval().cpu(), scheduler=scheduler).save_pretrained(tmp)
    (tmp / "train.json").write_text(json.dumps({"iters": iters, "seconds": time.perf_counter() - t0, **RECIPE,
                                                **(about or {})}))
    os.replace(tmp, folder)
    return folder


def distmatch_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distmatch", *args], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


# Runs in a fresh interpreter: distmatch is made unimportable, so only diffusers can read the folder.
PIPELINE_SAMPLER = """
import sys, time, numpy as np, torch
sys.modules["distmatch"] = None
from diffusers import DiffusionPipeline
folder, n, steps, seed, dest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = DiffusionPipeline.from_pretrained(folder)
if len(sys.argv) > 6:  # another network in the same scheduler: the teacher, i.e. the student at iteration 0
    pipe.unet = type(pipe.unet).from_pretrained(sys.argv[6], subfolder="unet")
t0 = time.perf_counter()
images = pipe(batch_size=n, num_inference_steps=steps, generator=torch.manual_seed(seed), output_type="np").images
np.save(dest, images)
print(time.perf_counter() - t0)
"""


def pipeline_sampler(folder: Path, steps: int, threads: int, unet_from: Path | None = None):
    """Samples of a pipeline folder in [-1, 1] (N, 1, H, W), drawn by stock diffusers in a fresh process, and the
    seconds the pipeline call took there; `unet_from`: that pipeline folder's unet in its place."""
    def sample(n, g):
        dest = folder.parent / f"{folder.name}-{steps}{'-teacher' if unet_from else ''}-samples.npy"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run([sys.executable, "-c", PIPELINE_SAMPLER, str(folder), str(n), str(steps),
                              str(int(g.initial_seed())), str(dest), *([str(unet_from)] if unet_from else [])],
                             check=True, env=env, stdout=subprocess.PIPE, text=True)
        images = torch.from_numpy(np.load(dest)).permute(0, 3, 1, 2)  # NHWC in [0, 1], as pipelines return
        return images * 2 - 1, float(run.stdout.split()[-1])
    return sample


def main():
    import distmatch
    from distmatch.eval.inception import inception_path
    from mnist import distmatch_rows, mnist_train, score_rows, trained_timesteps, training_seconds, write_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/mnist-diffusers")
    ap.add_argument("--inception", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-iters", type=int, default=10000)
    ap.add_argument("--iters", type=int, default=None, help="distillation iterations (default: the image default)")
    ap.add_argument("--steps", type=int, nargs="*", default=[1, 4])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = inception_path(args.inception)
    data = mnist_train(out)
    folder = train(out, np.load(data), args.train_iters)
    distill_s, plan = {}, [(f"teacher, {k}-step DDPMPipeline (its own)", (k, pipeline_sampler(folder, k, args.threads)))
                           for k in (1000, 50)]
    for k in args.steps:
        student, export = out / f"student-{k}", out / f"export-{k}"
        more = ["--set", f"train.iters={args.iters}"] if args.iters else []
        if not (student / "model.safetensors").exists():  # a finished student is reused (its row names its levels)
            distmatch_cli("distill", "--teacher", str(folder), "--data", str(data), "--steps", str(k),
                          "--out", str(student), *more)
        if not (export / "model_index.json").exists():
            distmatch_cli("export", "--model", str(student), "--out", str(export))
        distill_s[k] = training_seconds(student)
    starts = {k: trained_timesteps(distmatch.load(out / f"student-{k}").loaded) for k in args.steps}
    plan += [(f"dmd2 student, {k} step{'s' * (k > 1)} from {starts[k]}, exported",
              (k, pipeline_sampler(out / f"export-{k}", k, args.threads)))
             for k in args.steps]  # the rows the bar is about come first
    plan += [(f"teacher in the {k}-step student's scheduler (iteration 0)",
              (k, pipeline_sampler(out / f"export-{k}", k, args.threads, unet_from=folder))) for k in args.steps]
    plan += distmatch_rows(distmatch.load(folder), {})
    print(write_table(score_rows(plan, out, args.n, weights, prepare=lambda x: x.clamp(-1, 1)), distill_s, out))


if __name__ == "__main__":
    main()
