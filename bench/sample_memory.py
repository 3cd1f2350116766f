"""Peak memory of sampling a large image network: a UNet2DModel of google/ddpm-cifar10-32's shape (random weights)
wrapped by wrap_teacher, n images in one Euler step, on one thread. Run it in a fresh process per figure (the peak is
the process's):

    python bench/sample_memory.py --n 512 [--src path/to/another/checkout/src]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def peak_mib() -> float:
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    import diffusers
    import torch

    import distmatch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                                layers_per_block=2)
    teacher = distmatch.wrap_teacher(net, sample_shape=(3, 32, 32),
                                     alphas_cumprod=diffusers.DDPMScheduler().alphas_cumprod)
    before, t0 = peak_mib(), time.perf_counter()
    teacher.sample(args.n, steps=1)
    print(f"n {args.n}: peak {peak_mib():.0f} MiB (after wrapping {before:.0f}), {time.perf_counter() - t0:.0f} s, "
          f"distmatch from {Path(distmatch.__file__).parent}")


if __name__ == "__main__":
    main()
