"""Built-in data sets that need no download: 2-D toys and scikit-learn's 8x8 digits.

Every split is a pure function of its seed (its own torch / numpy generator, never the global RNG), so a preset
name alone reproduces a run.  The Gaussian-mixture toys also expose their exact mixture, in raw space, which
gives an error-free teacher and exact evaluation.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..teachers.gmm import GaussianMixture
from .arrays import RawData

SPLIT_SIZES = {"train": 20000, "test": 5000}
SPLIT_SEEDS = {"train": 0, "test": 1}
TOY_NOISE = 0.05
DIGITS_TEST_SIZE = 360


# ---------------------------------------------------------------- Gaussian mixtures (raw space)

def eight_gaussians(labeled: bool = False) -> GaussianMixture:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return _isotropic_mixture(means, std=0.1, labeled=labeled)


def grid_gaussians(labeled: bool = False) -> GaussianMixture:
    means = torch.tensor(list(itertools.product(range(-2, 3), repeat=2)), dtype=torch.float64)
    return _isotropic_mixture(means, std=0.08, labeled=labeled)


def _isotropic_mixture(means: torch.Tensor, std: float, labeled: bool) -> GaussianMixture:
    k = len(means)
    return GaussianMixture(torch.ones(k), means, torch.full((k,), std ** 2),
                           labels=list(range(k)) if labeled else None, num_classes=k if labeled else 0)


# ---------------------------------------------------------------- other 2-D toys: (n, rng) -> (n, 2) float32

def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn.make_moons' shape (random positions along the arcs), centred and scaled to about [-2, 2]."""
    outer = rng.random(n) < 0.5
    t = rng.random(n) * math.pi
    x = np.where(outer, np.cos(t), 1 - np.cos(t))
    y = np.where(outer, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], axis=1) + TOY_NOISE * rng.standard_normal((n, 2))
    return ((points - [0.5, 0.25]) * (4 / 3)).astype(np.float32)


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform over the 8 'black' cells of a 4x4 board covering [-2, 2]^2."""
    black_cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=np.float64)
    cells = black_cells[rng.integers(len(black_cells), size=n)]
    return (cells - 2 + rng.random((n, 2))).astype(np.float32)


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn.make_swiss_roll's (x, z) spiral, t in [1.5π, 4.5π], scaled by 1/7 to span about [-2, 2]."""
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 7
    return (points + TOY_NOISE * rng.standard_normal((n, 2))).astype(np.float32)


def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved arms (one the other rotated by π), radius up to 2; sqrt spreads points evenly in length."""
    t = np.sqrt(rng.random(n)) * 3 * math.pi
    radius = 2 * t / (3 * math.pi)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    points = sign * np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    return (points + TOY_NOISE * rng.standard_normal((n, 2))).astype(np.float32)


def concentric_rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Three circles of radius 2/3, 4/3 and 2; points per ring proportional to its length (even density)."""
    radii = np.array([2 / 3, 4 / 3, 2.0])
    radius = radii[rng.choice(len(radii), size=n, p=radii / radii.sum())]
    angle = rng.random(n) * 2 * math.pi
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return (points + TOY_NOISE * rng.standard_normal((n, 2))).astype(np.float32)


# ---------------------------------------------------------------- digits

@functools.lru_cache(maxsize=1)
def _shuffled_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.images))
    return bunch.images[order], bunch.target[order].astype(np.int64)


def digits(split: str) -> RawData:
    images, labels = _shuffled_digits()
    chosen = slice(None, DIGITS_TEST_SIZE) if split == "test" else slice(DIGITS_TEST_SIZE, None)
    return RawData(images[chosen].copy(), labels[chosen].copy(), "nhw", class_names=list(range(10)))


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class Preset:
    description: str
    load: Callable[[str], RawData]
    mixture: Callable[[], GaussianMixture] | None = None


def _mixture_loader(make_mixture: Callable[[], GaussianMixture], labeled: bool) -> Callable[[str], RawData]:
    def load(split: str) -> RawData:
        mixture = make_mixture()
        generator = torch.Generator().manual_seed(SPLIT_SEEDS[split])
        points, components = mixture.sample(SPLIT_SIZES[split], generator)
        if not labeled:
            return RawData(points.numpy(), None, "nd")
        return RawData(points.numpy(), components.numpy().astype(np.int64), "nd",
                       class_names=list(range(len(mixture.means))))
    return load


def _toy_loader(sample: Callable[[int, np.random.Generator], np.ndarray]) -> Callable[[str], RawData]:
    def load(split: str) -> RawData:
        return RawData(sample(SPLIT_SIZES[split], np.random.default_rng(SPLIT_SEEDS[split])), None, "nd")
    return load


def _mixture_preset(description: str, make: Callable[[bool], GaussianMixture], labeled: bool) -> Preset:
    factory = functools.partial(make, labeled)
    return Preset(description, _mixture_loader(factory, labeled), factory)


PRESETS: dict[str, Preset] = {
    "8gaussians": _mixture_preset("8 Gaussians (std 0.1) on a circle of radius 2", eight_gaussians, False),
    "8gaussians-labeled": _mixture_preset("8gaussians with class label = component", eight_gaussians, True),
    "25gaussians": _mixture_preset("5x5 grid of Gaussians (std 0.08) at {-2..2}^2", grid_gaussians, False),
    "25gaussians-labeled": _mixture_preset("25gaussians with class label = component", grid_gaussians, True),
    "moons": Preset("two interleaved half circles (make_moons style, noise 0.05)", _toy_loader(two_moons)),
    "checkerboard": Preset("uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2", _toy_loader(checkerboard)),
    "swissroll": Preset("2-D swiss roll spiral spanning about [-2, 2] (noise 0.05)", _toy_loader(swiss_roll)),
    "spirals": Preset("two interleaved spiral arms (noise 0.05)", _toy_loader(two_spirals)),
    "rings": Preset("three concentric circles of radius 2/3, 4/3, 2 (noise 0.05)", _toy_loader(concentric_rings)),
    "digits": Preset("scikit-learn 8x8 handwritten digits, 10 classes (1437 train / 360 test)", digits),
}


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: preset.description for name, preset in PRESETS.items()}


def load_preset(name: str, split: str = "train") -> RawData:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split '{split}': choose train or test")
    return PRESETS[name].load(split)


def preset_mixture(name: str) -> GaussianMixture | None:
    """The exact mixture of a Gaussian-mixture preset, in raw (un-normalised) space; None for other presets."""
    preset = PRESETS.get(name)
    return preset.mixture() if preset is not None and preset.mixture is not None else None
