"""Where a 1-step student of 8 Gaussians sends each point of its 2-D noise plane: a picture of the partition.

Each pixel z in [-3, 3]^2 is coloured by the mode the student maps σ_max z to (dark blue: further than 3 stds
from every mode). Counts the connected regions of the partition and the Gaussian-weighted share of noise that
lands off every mode; every region's edge is a seam of off-mode samples.

    python bench/noise_map.py RUN [RUN ...] --out bench/results/noise_map_8g.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

STD = 0.1  # the 8gaussians preset: std 0.1 on a circle of radius 2
CENTRES = np.stack([2 * np.cos(np.arange(8) * np.pi / 4), 2 * np.sin(np.arange(8) * np.pi / 4)], 1)


def noise_map(run: str, n: int = 400) -> tuple[np.ndarray, int, float, float]:
    from scipy import ndimage

    from distmatch.models import load_model

    model = load_model(run)
    if model.spec.source != "8gaussians" or model.config.get("steps") != 1:
        raise SystemExit(f"{run}: not a 1-step student of the 8gaussians preset")
    u = torch.linspace(-3, 3, n)
    z = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
    sigma = float(model.config["sigmas"][0])
    with torch.no_grad():
        x = model.denoiser(z * sigma, torch.full((len(z),), sigma)).numpy()
    x = x * np.asarray(model.spec.scale) + np.asarray(model.spec.shift)
    d = np.sqrt(((x[:, None] - CENTRES[None]) ** 2).sum(-1))
    off = d.min(1) > 3 * STD
    img = np.where(off, -1, d.argmin(1)).reshape(n, n)
    regions = sum(ndimage.label(img == k)[1] for k in range(8))
    w = np.exp(-(z ** 2).sum(1).numpy() / 2)
    return img, regions, float((w * off).sum() / w.sum()), float((w * (d.min(1) > 6 * STD)).sum() / w.sum())


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", default="", help="comma-separated titles (default: the folder names)")
    ap.add_argument("--out", default="bench/results/noise_map_8g.png")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [Path(r).name for r in args.runs]
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4 * len(args.runs), 4.8), squeeze=False)
    for ax, run, label in zip(axes[0], args.runs, labels):
        img, regions, off3, off6 = noise_map(run)
        ax.imshow(img, extent=[-3, 3, -3, 3], origin="lower", cmap="tab10", vmin=-1, vmax=8)
        ax.set_title(f"{label}\n{regions} regions, {off3:.0%} of noise off-mode", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        print(f"{run}: {regions} regions; noise mass off-mode (>3 std) {off3:.3f}, (>6 std) {off6:.3f}")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)


if __name__ == "__main__":
    main()
