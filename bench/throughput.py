"""Distillation throughput on the real MNIST DDPM: the trainer's time per iteration against the time of the
network passes that iteration needs, run as a bare torch loop beside it (same networks, batch and passes).

    python bench/throughput.py --out bench/out/throughput [--iters 60] [--repeats 2] [--threads 2] [--device cuda]

dmd2 as published on images (1 step, batch 64, GAN on, 5 critic updates per student update). Per iteration the
bare loop runs: the student's samples (no grad); the critic and its GAN head on fake + real rows, backward, step;
every 5th iteration the student's forward with grad, the teacher and the critic on its noised samples, the GAN
term through the critic at DMD2's constant weight (the image default), backward, step and EMA. The ratio is the
trainer's overhead: the loop, accelerate, logging, checkpoints. Writes <out>/results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data"


def mnist_teacher(shared: Path):
    import distmatch
    from mnist_ddpm import ALPHAS_CUMPROD, load_mnist_ddpm

    net = load_mnist_ddpm(shared / "real-teachers" / "mnist-ddpm" / "ddpm_mnist.pt")
    return distmatch.wrap_teacher(net, sample_shape=(1, 28, 28), alphas_cumprod=ALPHAS_CUMPROD,
                                  timesteps="discrete", features="b_mid")


def trainer_seconds_per_iter(teacher, data: str, out: Path, iters: int) -> float:
    import distmatch

    distmatch.distill(teacher, out, data=None if data is None else data, progress=False,
                      settings={"train.iters": iters, "train.log_every": 10, "train.ckpt_every": 10 ** 6})
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r["it"] == 10)  # after the first 10 iterations: warm caches, as the bare loop
    return (log[-1]["time"] - first["time"]) / (log[-1]["it"] - 10)


def bare_seconds_per_iter(teacher, real: torch.Tensor, iters: int, n: int = 64, ratio: int = 5,
                          device: str = "cpu") -> float:
    from distmatch.methods.common import Critic
    from distmatch.methods.losses import critic_loss, dm_gradient, dm_loss, gan_discriminator_loss, \
        gan_generator_loss
    from distmatch.training.ema import ema_copy, ema_update

    loaded = teacher.loaded
    schedule, adapter = loaded.schedule, loaded.init_net.to(device)
    grid, real = schedule.grid.float().to(device), real.to(device)
    sigma0 = schedule.student_levels(1, 7.0, 0.35)[0]
    scale0 = schedule.input_scale(sigma0)
    gen = copy.deepcopy(adapter).requires_grad_(True).train()
    critic = Critic(copy.deepcopy(adapter).requires_grad_(True).train(), gan=True).to(device)  # its head too
    ema = ema_copy(gen)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=1e-4, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-4, weight_decay=0.0)

    def levels(k, lo=0, hi=999):
        return grid[torch.randint(lo, hi + 1, (k,), device=device)]

    def noised(x, s):
        return x + s[:, None, None, None] * torch.randn_like(x)

    def one(it):
        s0 = torch.full((n,), sigma0, device=device)
        with torch.no_grad():
            fake = gen(torch.randn(n, 1, 28, 28, device=device) * scale0, s0)
        x_real = real[torch.randint(len(real), (n,), device=device)]
        s, s_r = levels(n), levels(n)
        x0, logits = critic(torch.cat([noised(fake, s), noised(x_real, s_r)]), torch.cat([s, s_r]))
        loss = critic_loss(x0[:n], fake, s, 0.5) + 1e-2 * gan_discriminator_loss(logits[:n], logits[n:])
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 10.0)
        opt_c.step()
        if it % ratio:
            return
        critic.requires_grad_(False)
        x = gen(torch.randn(n, 1, 28, 28, device=device) * scale0, s0).float()
        s = levels(n, 20, 980)
        with torch.no_grad():
            x_t = noised(x.detach(), s)
            g = dm_gradient(x, adapter(x_t, s), critic(x_t, s)[0])
        loss_dm = dm_loss(x, g)
        s_g = levels(n)
        loss_g = gan_generator_loss(critic(noised(x, s_g), s_g)[1])
        loss = loss_dm + 3e-3 * loss_g  # DMD2's constant, the image default (no balance: no extra gradients)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 10.0)
        opt_g.step()
        ema_update(ema, gen, 0.99)
        opt_c.zero_grad(set_to_none=True)
        critic.requires_grad_(True)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for it in range(10):
        one(it)
    sync()
    t0 = time.perf_counter()
    for it in range(10, iters):
        one(it)
    sync()
    return (time.perf_counter() - t0) / (iters - 10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/throughput")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the bare loop runs (the trainer takes the GPU when there is one)")
    ap.add_argument("--shared", default=str(SHARED), help="the folder holding real-teachers/ and mnist/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = Path(args.shared)
    images = np.load(shared / "mnist" / "train20k-images.npz")["arr_0"]
    data = out / "mnist20k.npy"
    if not data.exists():
        np.save(data, images)
    real = torch.from_numpy(images[:, None].astype(np.float32) / 127.5 - 1)
    teacher = mnist_teacher(shared)
    rows = []
    for r in range(args.repeats):  # interleaved, so machine noise hits both alike
        t_trainer = trainer_seconds_per_iter(teacher, str(data), out / f"run{r}", args.iters)
        t_bare = bare_seconds_per_iter(teacher, real, args.iters, device=args.device)
        rows.append({"trainer_s_per_iter": t_trainer, "bare_s_per_iter": t_bare, "ratio": t_trainer / t_bare})
        print(rows[-1], flush=True)
    result = {"rows": rows, "median_ratio": float(np.median([r["ratio"] for r in rows])), "threads": args.threads,
              "device": args.device, "torch": torch.__version__, "batch": 64, "iters": args.iters}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
