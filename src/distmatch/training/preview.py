"""Pictures of a run's samples while it trains, so a long run can be judged (and stopped) early.

At every checkpoint and at the end (a student also at its start: the teacher in its few steps), the model being
trained is sampled as `distmatch sample` will sample it once saved (the EMA weights, the same seed every time, so
the pictures of a run compare frame to frame) and drawn into `previews/it<iteration>.png` and TensorBoard's
"samples": an image grid, or a scatter for vectors.
"""
from __future__ import annotations

import math
from pathlib import Path

PREVIEW_DIR = "previews"
PREVIEW_SEED = 0
N_IMAGES, N_POINTS = 64, 2000  # a grid of 8 x 8 images; enough points for a scatter to show its modes
N_TEACHER_POINTS = 250         # a teacher costs 35-79 evaluations a sample: its previews stay ~2 % of its run


def preview_path(out: Path, it: int) -> Path:
    return out / PREVIEW_DIR / f"it{it:07d}.png"


def preview_samples(model):
    """The samples a preview draws: the model's first N, from seed PREVIEW_SEED (normalised space)."""
    n = N_IMAGES if model.spec.kind == "image" else N_TEACHER_POINTS if model.kind == "teacher" else N_POINTS
    return model.sample(n, seed=PREVIEW_SEED)[0]


def draw_samples(spec, x, title: str, path: Path, max_images: int = N_IMAGES) -> Path:
    """A picture of samples in normalised space: an image grid (grey or RGB; other channel counts show their
    first channel), or a scatter in the data's own units (vectors of two or more dimensions)."""
    from ..report import plots

    if spec.kind == "image":
        if x.shape[1] not in (1, 3):
            x, title = x[:, :1], f"{title} (channel 0 of {x.shape[1]})"
        nrow = max(8, math.ceil(math.sqrt(min(len(x), max_images))))
        return plots.image_grid_panels([(title, x.float().clamp(-1, 1).numpy())], path, nrow=nrow,
                                       max_images=max_images)
    return plots.scatter_panels([(title, spec.to_user(x))], path)


def write_preview(out: Path, model, it: int, writer=None) -> Path | None:
    """Draw the model's preview for iteration `it`; None for data a picture cannot show (1-D vectors)."""
    if model.spec.kind != "image" and model.spec.shape[0] < 2:
        return None
    path = draw_samples(model.spec, preview_samples(model), f"iteration {it}", preview_path(out, it))
    if writer is not None:
        from matplotlib.image import imread

        writer.add_image("samples", imread(path)[..., :3], it, dataformats="HWC")
    return path
