"""A user's own DDPM, as a user would keep it: the network of ../shared/data/real-teachers/mnist-ddpm, written from
its layer-by-layer description (../shared/data/real-teachers/README.md), loaded strictly from the checkpoint.

    from mnist_ddpm import load_mnist_ddpm
    net = load_mnist_ddpm("../shared/data/real-teachers/mnist-ddpm/ddpm_mnist.pt")   # eps = net(x_t, t), t integer
"""
from __future__ import annotations

import torch
from torch import nn

BETAS = torch.linspace(1e-4, 0.02, 1000)  # 1000 linear betas: diffusers' DDPMScheduler(beta_schedule="linear")
ALPHAS_CUMPROD = torch.cumprod(1 - BETAS, 0)


class Block(nn.Module):
    """LayerNorm over (C, H, W) (skipped when normalize is false; its weights are still stored), then two 3x3
    convolutions, each followed by SiLU."""

    def __init__(self, shape, c_in: int, c_out: int, normalize: bool = True):
        super().__init__()
        self.ln = nn.LayerNorm(shape)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.normalize = normalize

    def forward(self, x):
        h = self.ln(x) if self.normalize else x
        return nn.functional.silu(self.conv2(nn.functional.silu(self.conv1(h))))


def blocks(size: int, chans: list[int], last_normalize: bool = True) -> nn.Sequential:
    """Three Blocks at one resolution, chans = [c_in, c1, c2, c_out]."""
    return nn.Sequential(*(Block((chans[i], size, size), chans[i], chans[i + 1],
                                 normalize=last_normalize or i < 2) for i in range(3)))


def time_projection(d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(100, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class MnistUNet(nn.Module):
    """eps = net(x_t, t): a U-Net on 1x28x28 over 28 -> 14 -> 7 -> 3, time from a 1000 x 100 embedding table."""

    def __init__(self):
        super().__init__()
        self.time_embed = nn.Embedding(1000, 100)
        self.te1, self.b1 = time_projection(1), blocks(28, [1, 10, 10, 10])
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)
        self.te2, self.b2 = time_projection(10), blocks(14, [10, 20, 20, 20])
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)
        self.te3, self.b3 = time_projection(20), blocks(7, [20, 40, 40, 40])
        self.down3 = nn.Sequential(nn.Conv2d(40, 40, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
        self.te_mid, self.b_mid = time_projection(40), blocks(3, [40, 20, 20, 40])
        self.up1 = nn.Sequential(nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(40, 40, 2, 1))
        self.te4, self.b4 = time_projection(80), blocks(7, [80, 40, 20, 20])
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5, self.b5 = time_projection(40), blocks(14, [40, 20, 10, 10])
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out, self.b_out = time_projection(20), blocks(28, [20, 10, 10, 10], last_normalize=False)
        self.conv_out = nn.Conv2d(10, 1, 3, 1, 1)

    def forward(self, x, t):
        e = self.time_embed(t.long())

        def bias(te, h):  # the time projection, added to a stage's input as a per-channel bias
            return h + te(e)[:, :, None, None]

        out1 = self.b1(bias(self.te1, x))
        out2 = self.b2(bias(self.te2, self.down1(out1)))
        out3 = self.b3(bias(self.te3, self.down2(out2)))
        mid = self.b_mid(bias(self.te_mid, self.down3(out3)))
        out4 = self.b4(bias(self.te4, torch.cat([out3, self.up1(mid)], 1)))
        out5 = self.b5(bias(self.te5, torch.cat([out2, self.up2(out4)], 1)))
        out = self.b_out(bias(self.te_out, torch.cat([out1, self.up3(out5)], 1)))
        return self.conv_out(out)


def load_mnist_ddpm(path) -> MnistUNet:
    """The checkpoint's network (every key prefixed `network.`), loaded with strict=True."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("network."):]: v for k, v in state.items() if k.startswith("network.")}
    net = MnistUNet()
    net.load_state_dict(state, strict=True)
    return net.eval()


@torch.no_grad()
def ancestral_sample(net: MnistUNet, n: int, generator: torch.Generator, batch: int = 250) -> torch.Tensor:
    """The teacher's own 1000-step DDPM ancestral sampler (variance β_t). Not clamped: the network cannot see an
    image's offset or contrast, so its samples drift out of [-1, 1], and clamping would flatten them."""
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        x = torch.randn((m, 1, 28, 28), generator=generator)
        for t in reversed(range(1000)):
            eps = net(x, torch.full((m,), t, dtype=torch.long))
            a, ab, b = 1 - BETAS[t], ALPHAS_CUMPROD[t], BETAS[t]
            x = (x - b / (1 - ab).sqrt() * eps) / a.sqrt()
            if t > 0:
                x = x + b.sqrt() * torch.randn(x.shape, generator=generator)
        out.append(x)
    return torch.cat(out)
