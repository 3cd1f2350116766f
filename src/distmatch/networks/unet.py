"""A small U-Net backbone for images (any channel count, any size; downsamples only while sizes stay even).

Kept small and attention-free by default: on a 2-core CPU it trains faster than diffusers' UNet2DModel of the
same width. `features` are the bottleneck activations, for the GAN head.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .embed import NoiseEmbedding


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.drop(h))


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.heads = heads if ch % heads == 0 else 1

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNetBackbone(nn.Module):
    def __init__(self, in_ch: int, size: tuple[int, int], channels, blocks: int = 1, attention: bool = False,
                 dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        channels = list(channels)
        emb_dim = 4 * channels[0]
        self.noise_emb = NoiseEmbedding(emb_dim, num_classes)
        self.inp = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down, self.downsample, self.up, self.upsample = (nn.ModuleList() for _ in range(4))
        h, w = size
        skips, ch, halved = [channels[0]], channels[0], []
        for i, c in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ch, c, emb_dim, dropout))
                ch = c
                skips.append(ch)
            self.down.append(level)
            if i < len(channels) - 1:
                can_down = h % 2 == 0 and w % 2 == 0 and min(h, w) >= 4
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if can_down else nn.Identity())
                halved.append(can_down)
                h, w = (h // 2, w // 2) if can_down else (h, w)
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = Attention(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.feature_dim, self.feature_size = ch, (h, w)
        for i, c in reversed(list(enumerate(channels))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(ResBlock(ch + skips.pop(), c, emb_dim, dropout))
                ch = c
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                                   nn.Conv2d(ch, ch, 3, padding=1)) if halved[i - 1] else nn.Identity())
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, in_ch, 3, padding=1)

    def forward(self, x, c_noise, cond=None, return_features: bool = False):
        emb = self.noise_emb(c_noise, cond)
        h = self.inp(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        feats = h
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        out = self.out(F.silu(self.out_norm(h)))
        return (out, feats) if return_features else out
