"""An in-domain feature network for image metrics, trained once per data set and cached on disk.

Inception-v3 cannot be downloaded here and runs at ~4 images/s on CPU, so Fréchet distance, KID and PRDC are
computed on the 128-d pooled features of a small CNN trained on the reference data itself:
- with labels, as a classifier (cross-entropy); its logits also give class coverage and class accuracy;
- without labels, as an autoencoder: the pooled 128-d code is decoded by one linear layer to the image and
  trained with MSE, so the features must keep what distinguishes images.  Its metric is named `fd_autoencoder`.
Numbers from different feature networks are not comparable; the cache key (fingerprint + kind) and the saved
hyper-parameters make it the same network across runs on the same data.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_bytes
from ..errors import UserError

FEATURE_DIM = 128
WIDTHS = (32, 64, 128, 128)
DEFAULT_HPARAMS = {"steps": None, "batch": 64, "lr": 2e-3, "weight_decay": 1e-4, "shift": 1, "val_fraction": 0.1}
_FORMAT = 1


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    # One conv per stage: two per stage tripled the CPU cost of a step for no accuracy gain on digits.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class FeatureNet(nn.Module):
    """Conv stages 32-64-128-128 with GroupNorm/SiLU, global average pool -> 128-d features, plus a linear head.

    Stages after the first halve the resolution only while it is at least 8 pixels, so 8x8 inputs keep a 4x4 map
    instead of collapsing to 1x1; 16, 28 and 32 pixels end at 4, 7 and 4.  The fourth stage widens the receptive
    field before pooling (MNIST test accuracy rose from 84% to 96% at 500 steps).  `num_classes` > 0 makes `head`
    a classifier; 0 makes it a linear decoder to the image (autoencoder).  Any channel count.
    """

    def __init__(self, in_channels: int, image_size: int | list[int], num_classes: int = 0, widths=WIDTHS):
        super().__init__()
        if widths[-1] != FEATURE_DIM:
            raise ValueError(f"the last width must be {FEATURE_DIM}")
        self.config = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                       "widths": list(widths), "format": _FORMAT}
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size  # [H, W]: not square
        layers, cin, size = [], in_channels, min(height, width)
        for i, w in enumerate(self.config["widths"]):
            stride = 2 if i > 0 and size >= 8 else 1
            size = math.ceil(size / stride)
            layers.append(_block(cin, w, stride))
            cin = w
        self.body = nn.Sequential(*layers)
        out = num_classes if num_classes > 0 else in_channels * height * width
        self.head = nn.Linear(FEATURE_DIM, out)
        self.info: dict = {}

    @property
    def kind(self) -> str:
        return "classifier" if self.config["num_classes"] > 0 else "autoencoder"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "classifier":
            raise RuntimeError("this feature network was trained without labels; it has no classifier head")
        return self.head(self.features(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).reshape(x.shape)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own integer offset in [-max_shift, max_shift]² (edges replicated)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _split(n: int, labels, frac: float, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    n_val = min(int(n * frac), 2000) if labels is not None else 0
    return perm[n_val:], perm[:n_val]


@torch.inference_mode()
def _accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) == 0:
        return float("nan")
    pred = torch.cat([net.logits(c).argmax(1) for c in x.split(512)])
    return float((pred == y).float().mean())


def image_size(x: torch.Tensor) -> int | list[int]:
    """The side of square images (as cached networks have always recorded it), else [height, width]."""
    return int(x.shape[-1]) if x.shape[-1] == x.shape[-2] else [int(x.shape[-2]), int(x.shape[-1])]


def forked_rng():
    """torch's RNG states restored on leaving: the CPU's and every CUDA device's (torch.manual_seed seeds them all)."""
    return torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else [])


def train_feature_net(x: torch.Tensor, labels, seed: int = 0, hparams: dict | None = None,
                      progress: bool = True) -> FeatureNet:
    """Train a FeatureNet on images x (N, C, H, W) in [-1, 1]; a classifier when labels are given.

    A fixed step budget (not epochs) keeps the cost bounded for large data sets.  10% (at most 2000) of labelled
    images are held out to report `info["val_accuracy"]`.  Deterministic for a given seed on the same machine.
    """
    hp = {**DEFAULT_HPARAMS, **(hparams or {})}
    x = x.detach().to("cpu", torch.float32)
    y = None if labels is None else torch.as_tensor(labels).to("cpu", torch.long)
    num_classes = int(y.max()) + 1 if y is not None else 0
    start = time.perf_counter()
    with forked_rng():  # seed the initialisation without disturbing the caller's RNG
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], image_size(x), num_classes)
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _split(len(x), y, hp["val_fraction"], g)
    if hp["steps"] is None:  # ~3 epochs, but at least 500 steps for tiny sets and at most 2000 for large ones
        hp["steps"] = int(min(2000, max(500, 3 * len(train_idx) // hp["batch"])))
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=hp["steps"], pct_start=0.15)
    net.train()
    order = train_idx[torch.randperm(len(train_idx), generator=g)]
    pos = 0
    for _ in tqdm(range(hp["steps"]), desc="fitting the in-domain feature network (once per data set)",
                  leave=False, unit="step", mininterval=1.0, disable=not progress):
        if pos + hp["batch"] > len(order):  # new epoch: reshuffle
            order, pos = train_idx[torch.randperm(len(train_idx), generator=g)], 0
        idx = order[pos:pos + hp["batch"]]
        pos += hp["batch"]
        xb = random_shift(x[idx], hp["shift"], g)
        if y is not None:
            loss = F.cross_entropy(net.head(net.features(xb)), y[idx])
        else:  # reconstruct the un-shifted image from the shifted one's code: a mild invariance
            loss = F.mse_loss(net.head(net.features(xb)), x[idx].flatten(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    net.info = {"kind": net.kind, "seed": seed, "hparams": hp, "n_train": len(train_idx),
                "final_loss": float(loss.detach()), "train_seconds": round(time.perf_counter() - start, 2)}
    if y is not None:
        net.info["val_accuracy"] = _accuracy(net, x[val_idx], y[val_idx])
    return net


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTMATCH_CACHE") or Path.home() / ".cache" / "distmatch")


def _load(weights: Path, meta: Path, expect: dict) -> FeatureNet | None:
    """The cached network, or None if absent or built for differently shaped data."""
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        cfg = info.get("config", {})
        if any(cfg.get(k) != v for k, v in expect.items()):
            return None
        net = FeatureNet(cfg["in_channels"], cfg["image_size"], cfg["num_classes"], cfg["widths"])
        net.load_state_dict(load_file(str(weights)))
    except Exception:  # damaged or foreign files: retrain and overwrite rather than fail the evaluation
        return None
    net.info = {**info.get("info", {}), "cached": True}
    return net.eval()


def feature_net_kind(labels) -> str:
    """The in-domain network reference data get: a classifier when they carry labels, else an autoencoder."""
    return "classifier" if labels is not None else "autoencoder"


def get_feature_net(x: torch.Tensor, labels, fingerprint: str, cache_dir=None, seed: int = 0,
                    progress: bool = True) -> FeatureNet:
    """The feature network for reference images x (labels may be None), from the cache or trained and cached.

    Files: `<cache_dir>/<fingerprint>-<kind>.safetensors` and `.json` (architecture, hyper-parameters, held-out
    accuracy).  The fingerprint must identify the reference data (and its normalisation); the caller builds it.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", str(fingerprint)) or str(fingerprint).startswith("."):
        raise UserError(f"feature-net fingerprint {fingerprint!r} must be letters, digits, '.', '_' or '-'")
    if x.ndim != 4:
        raise UserError(f"feature network needs images (N, C, H, W); got shape {tuple(x.shape)}")
    kind = feature_net_kind(labels)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights, meta = cache / f"{fingerprint}-{kind}.safetensors", cache / f"{fingerprint}-{kind}.json"
    expect = {"in_channels": x.shape[1], "image_size": image_size(x), "format": _FORMAT}
    if labels is not None:
        expect["num_classes"] = int(torch.as_tensor(labels).max()) + 1
    net = _load(weights, meta, expect)
    if net is not None:
        return net
    net = train_feature_net(x, labels, seed=seed, progress=progress)
    cache.mkdir(parents=True, exist_ok=True)
    # JSON first, weights last: the weights file existing means the pair is complete.
    text = json.dumps({"config": net.config, "info": net.info}, indent=1)
    atomic_write_bytes(meta, text.encode())
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(weights, save(state, metadata={"kind": kind, "fingerprint": str(fingerprint)}))
    return net


@torch.inference_mode()
def extract(net: FeatureNet, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features (N, 128), logits (N, classes) or None) for images x, batched to bound memory."""
    device = next(net.parameters()).device
    feats, logits = [], []
    for chunk in x.detach().split(batch):
        f = net.features(chunk.to(device, torch.float32))
        feats.append(f.cpu())
        if net.kind == "classifier":
            logits.append(net.head(f).cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)
