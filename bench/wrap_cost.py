"""What wrap_teacher costs once, before a distillation: its probe of the network (shape, GAN features, finite
output at its levels), on the diffusers-recipe MNIST UNet and the real MNIST DDPM. One thread; median of runs.

    python bench/wrap_cost.py [--repeats 7] [--shared ../shared]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def seconds(wrap, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        wrap()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    real = args.shared / "data" / "real-teachers" / "mnist-ddpm" / "ddpm_mnist.pt"
    torch.set_num_threads(1)
    from diffusers import DDPMScheduler

    import distmatch
    from mnist_diffusers import make_unet

    alphas = DDPMScheduler().alphas_cumprod
    torch.manual_seed(0)
    unet = make_unet()
    rows = [("diffusers-recipe UNet2DModel", unet, {})]
    if real.is_file():
        from mnist_ddpm import ALPHAS_CUMPROD, load_mnist_ddpm

        rows.append(("real MNIST DDPM", load_mnist_ddpm(real), {"timesteps": "discrete", "features": "b_mid",
                                                                "alphas_cumprod": ALPHAS_CUMPROD}))
    for name, net, extra in rows:
        params = sum(p.numel() for p in net.parameters())
        t = seconds(lambda: distmatch.wrap_teacher(net, sample_shape=(1, 28, 28), **{"alphas_cumprod": alphas,
                                                                                      **extra}), args.repeats)
        print(f"{name} ({params / 1e6:.2f}M parameters): wrap_teacher {t:.3f} s")


if __name__ == "__main__":
    main()
