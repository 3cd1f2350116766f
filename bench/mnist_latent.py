"""A latent diffusion teacher on MNIST, made the way a diffusers user makes one, distilled through its folder.

An AutoencoderKL (28x28 digits -> 2 x 14 x 14 latents: half the numbers, its posterior sampled while it trains,
reconstruction MSE plus a small KL term, as latent diffusion's autoencoders are trained without their perceptual
and GAN terms) and, on its latents times the scaling factor that gives them unit spread (LDM's rule), a
UNet2DModel under DDPMScheduler trained with bench/mnist_diffusers.py's recipe (diffusers' DDPM example). The
folder holds unet/, vae/ and scheduler/, as a user would save them. Then, as a user would:

    python bench/mnist_latent.py --out W [--vae-iters 2000] [--iters 6000] [--threads 1]
    distmatch distill --teacher W/teacher --data W/mnist20k.npy --steps K --out W/student-K --set train.iters=1000
    python bench/score_students.py W/student-K --out W/scores --inception default_1.pt --threads 1
    python bench/mnist_latent.py --out W --rows --inception default_1.pt [--threads 1]

`--rows` scores, like bench/mnist.py (Inception FID / KID, 1000 samples vs the first 1000 MNIST test digits,
clamped): the autoencoder's reconstructions of those digits (what no latent model can beat), the teacher's own
DDPMScheduler loop at 1000 steps decoded, and distmatch's Heun 18, ancestral 100 and Euler 4 over the folder.
Each stage resumes. `--picture PNG ROW...` draws scored rows' first samples side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mnist import mnist_test, mnist_train, print_clamped_rows  # noqa: E402
from mnist_diffusers import train_recipe  # noqa: E402

KL_WEIGHT = 1e-4


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=28, mid_block_add_attention=False)


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=14, in_channels=2, out_channels=2, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def train_vae(out: Path, x0: torch.Tensor, iters: int, batch: int = 64) -> Path:
    """The autoencoder, with its scaling_factor set to 1 / std of the training digits' latents."""
    from tqdm.auto import tqdm

    folder = out / "vae"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    vae = make_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for it in tqdm(range(iters), desc="training the autoencoder"):
        g = torch.Generator().manual_seed(it)
        x = x0[torch.randint(len(x0), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        loss = (vae.decode(z).sample - x).pow(2).mean() + KL_WEIGHT * post.kl().mean() / x[0].numel()
        loss.backward()
        opt.step(), opt.zero_grad()
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(x0[i:i + 500]).latent_dist.mean for i in range(0, 5000, 500)])
    vae.register_to_config(scaling_factor=float(1 / mean.std()))
    tmp = out / "vae.tmp"
    vae.save_pretrained(tmp)
    (tmp / "train.json").write_text(json.dumps({"iters": iters, "batch": batch, "kl_weight": KL_WEIGHT,
                                                "seconds": time.perf_counter() - t0}))
    os.replace(tmp, folder)
    return folder


class LatentFolder:
    """What a user saves: the UNet, its scheduler and the autoencoder beside them."""

    def __init__(self, vae_dir: Path):
        self.vae_dir = vae_dir

    def __call__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler
        return self

    def save_pretrained(self, folder: Path) -> None:
        from diffusers import AutoencoderKL

        self.unet.save_pretrained(Path(folder) / "unet")
        self.scheduler.save_pretrained(Path(folder) / "scheduler")
        AutoencoderKL.from_pretrained(self.vae_dir).save_pretrained(Path(folder) / "vae")


@torch.no_grad()
def latents(vae, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(images[i:i + 500]).latent_dist.mean for i in range(0, len(images), 500)]
                     ) * vae.config.scaling_factor


@torch.no_grad()
def own_sampler(folder: Path, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    """The stock DDPMScheduler loop on latents, decoded (DDPMPipeline's loop, then LDMPipeline's decoding)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(steps)
    out = []
    for i in range(0, n, 250):
        z = torch.randn((min(250, n - i), 2, 14, 14), generator=g)
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t).sample, t, z, generator=g).prev_sample
        out.append(vae.decode(z / vae.config.scaling_factor).sample)
    return torch.cat(out)


def rows(out: Path, inception: str | None, n: int = 1000) -> None:
    from diffusers import AutoencoderKL

    from distmatch.models import load_model

    teacher = load_model(out / "teacher")
    vae = AutoencoderKL.from_pretrained(out / "teacher" / "vae").eval()
    test = torch.from_numpy(mnist_test()[:n]).float().div(127.5).sub(1).unsqueeze(1)
    plan = [("its autoencoder's reconstructions of the test digits", (0, lambda n, g: vae.decode(
                latents(vae, test) / vae.config.scaling_factor).sample)),
            ("its own DDPMScheduler loop, 1000 steps", (1000, lambda n, g: own_sampler(out / "teacher", n, 1000, g))),
            ("distmatch Heun 18", (35, lambda n, g: teacher.sample(n, seed=0)[0].float())),
            ("distmatch ancestral 100", (100, lambda n, g: teacher.with_solver("ancestral").sample(
                n, steps=100, seed=0)[0].float())),
            ("distmatch Euler 4", (4, lambda n, g: teacher.with_solver("euler").sample(n, steps=4, seed=0)[0].float()))]
    print_clamped_rows(plan, out / "scores", n, inception)


def posterior(out: Path, n: int = 1000) -> None:
    """How far a sample of the autoencoder's posterior lies from its mean (distmatch encodes data to the mean), in the
    scaled latents' units, beside their spread."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "teacher" / "vae").eval()
    x = torch.from_numpy(np.load(mnist_train(out))[:n]).float().div(127.5).sub(1).unsqueeze(1)
    with torch.no_grad():
        q = vae.encode(x).latent_dist
    s = vae.config.scaling_factor
    print(f"scaled latents: std of the means {float((q.mean * s).std()):.3f}, rms posterior std "
          f"{float((q.std * s).pow(2).mean().sqrt()):.3f}")


def picture(out: Path, names: list[str], path: str) -> None:
    """The first 32 saved samples of each named row (teacher rows and bench/score_students.py's runs), side by side."""
    from distmatch.report.plots import image_grid_panels

    panels = []
    for name in names:  # ROW or ROW=its title
        name, _, title = name.partition("=")
        stem = name.replace(" ", "_").replace(",", "")
        x = torch.load(out / "scores" / "samples" / f"{stem}.pt")[0][:32].clamp(-1, 1)
        panels.append((title or name, x.numpy()))
    print(image_grid_panels(panels, path, nrow=4, max_images=32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vae-iters", type=int, default=2000)
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", action="store_true", help="score the trained teacher's own rows")
    p.add_argument("--inception", default=None)
    p.add_argument("--posterior", action="store_true", help="the posterior's spread about its mean, in latents")
    p.add_argument("--picture", nargs="+", metavar=("PNG", "ROW"), help="draw these scored rows' first samples")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.picture:
        return picture(a.out, a.picture[1:], a.picture[0])
    if a.rows:
        return rows(a.out, a.inception)
    if a.posterior:
        return posterior(a.out)
    from diffusers import AutoencoderKL, DDPMScheduler

    a.out.mkdir(parents=True, exist_ok=True)
    x0 = torch.from_numpy(np.load(mnist_train(a.out))).float().div(127.5).sub(1).unsqueeze(1)
    vae_dir = train_vae(a.out, x0, a.vae_iters)
    z0 = latents(AutoencoderKL.from_pretrained(vae_dir).eval(), x0)
    print(f"latents {tuple(z0.shape[1:])}, std {float(z0.std()):.3f} after scaling")
    if (a.out / "teacher" / "unet").is_dir():
        return print(a.out / "teacher")
    print(train_recipe(a.out, z0, make_unet, DDPMScheduler(num_train_timesteps=1000), a.iters, every=500,
                       about={"latents": list(z0.shape[1:]), "vae": str(vae_dir)}, pipeline=LatentFolder(vae_dir)))


if __name__ == "__main__":
    main()
