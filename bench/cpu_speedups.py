"""Do channels_last or torch.compile speed up a small diffusers UNet on this CPU?

The diffusers MNIST teacher's network (bench/mnist_diffusers.py: UNet2DModel 16/32/64, attention at 7x7), batch 64
at 28x28: a training step (forward, backward, Adam) and a forward pass without gradients, each timed for 10 s after
three warm-up calls, in ms. One mode per process, so the modes do not share caches:

    for m in plain channels_last compile; do python bench/cpu_speedups.py --mode $m --threads 1; done
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def per_call_ms(fn, seconds: float = 10.0) -> float:
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    from mnist_diffusers import make_unet

    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["plain", "channels_last", "compile"], default="plain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, x = make_unet(), torch.randn(args.batch, 1, 28, 28)
    t = torch.randint(0, 1000, (args.batch,))
    if args.mode == "channels_last":
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(net) if args.mode == "compile" else net
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def train_step():
        run(x, t).sample.square().mean().backward()
        opt.step()
        opt.zero_grad()

    def forward():
        with torch.no_grad():
            run(x, t)

    print(f"{args.mode}: train step {per_call_ms(train_step):.1f} ms, forward {per_call_ms(forward):.1f} ms")


if __name__ == "__main__":
    main()
