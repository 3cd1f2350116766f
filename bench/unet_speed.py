"""Which image backbone trains faster on this CPU: distmatch's small U-Net or diffusers' UNet2DModel?

Same widths, no attention, one resnet block per level, EDM training step (forward + backward + Adam), measured in
one run side by side:  python bench/unet_speed.py [--size 8] [--batch 128] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def ours(size, channels):
    from distmatch.networks.unet import UNetBackbone

    net = UNetBackbone(1, (size, size), channels, blocks=1, attention=False, num_classes=10)
    return net, lambda x, s, y: net(x, s, y)


def diffusers_unet(size, channels):
    from diffusers import UNet2DModel

    net = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=tuple(channels),
                      layers_per_block=1, down_block_types=("DownBlock2D",) * len(channels),
                      up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=8, num_class_embeds=11,
                      add_attention=False)
    return net, lambda x, s, y: net(x, s, class_labels=y).sample


def steps_per_second(build, size, batch, channels, seconds=8.0):
    net, fwd = build(size, channels)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))
    n, t0 = -3, None  # three warm-up steps, then the clock starts
    while True:
        loss = (fwd(x, torch.rand(batch), y) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
        if n == 0:
            t0 = time.perf_counter()
        if t0 is not None and time.perf_counter() - t0 > seconds:
            return n / (time.perf_counter() - t0), sum(p.numel() for p in net.parameters())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels", default="32,64,64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    channels = [int(c) for c in args.channels.split(",")]
    for name, build in (("distmatch UNetBackbone", ours), ("diffusers UNet2DModel", diffusers_unet)):
        sps, params = steps_per_second(build, args.size, args.batch, channels)
        print(f"{name:24s} {args.size}x{args.size} batch {args.batch} channels {channels}: "
              f"{sps:6.2f} train steps/s, {params / 1e6:.2f} M params")


if __name__ == "__main__":
    main()
