"""Figures for run reports: sample scatters, image grids, training curves and metric bars.

Every function writes one PNG and returns its path.  Figures are built on `matplotlib.figure.Figure` directly
rather than through pyplot: that renders with the Agg canvas, leaves the global backend and pyplot's figure
registry alone (no leaked figures in long runs), and works with no display.
"""
from __future__ import annotations

import io

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PathLike = str | Path
_SKIP_KEYS = ("it", "time")  # bookkeeping fields of a log record, not curves
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _to_numpy(x) -> np.ndarray:
    """Accept numpy arrays, torch tensors (possibly on an accelerator or requiring grad) and nested lists."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _save(fig: Figure, path: PathLike, **kwargs) -> Path:
    """The figure as a PNG at `path`, atomically (a kill never leaves half a picture)."""
    from ..checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _subsample(x: np.ndarray, cap: int) -> np.ndarray:
    """At most `cap` rows with a fixed seed, so re-rendering the same samples gives the same picture."""
    if x.shape[0] <= cap:
        return x
    idx = np.sort(np.random.default_rng(0).choice(x.shape[0], size=cap, replace=False))
    return x[idx]


# ---------------------------------------------------------------------------------------------------- scatter


def _pca_basis(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, top-2 principal directions (D, 2) and their share of the variance, fitted on `ref` only.

    Fitting on the reference (data) panel and reusing the projection keeps all panels in the same coordinates,
    so a student that misses a mode shows an empty region instead of a re-fitted, differently rotated cloud.
    """
    if ref.shape[0] < 2:  # nothing to fit (e.g. an all-NaN reference): fall back to the first two axes
        return np.zeros(ref.shape[1]), np.eye(ref.shape[1])[:, :2], float("nan")
    ref = _subsample(ref, 20000)  # SVD cost; 20k rows pin the top directions down well enough for a picture
    mean = ref.mean(axis=0)
    _, s, vt = np.linalg.svd(ref - mean, full_matrices=False)
    basis = vt[:2].T
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)  # SVD sign is arbitrary
    var = s**2
    return mean, basis, float(var[:2].sum() / max(var.sum(), 1e-300))


def _default_limits(ref: np.ndarray) -> np.ndarray:
    """(xmin, xmax, ymin, ymax) from the 0.5/99.5 percentiles plus a 10% margin, robust to a few outliers."""
    if ref.shape[0] == 0:
        return np.array([-1.0, 1.0, -1.0, 1.0])
    lo, hi = np.percentile(ref, [0.5, 99.5], axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    return np.array([lo[0], hi[0], lo[1], hi[1]])


def _finite_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    keep = np.isfinite(x).all(axis=1)
    return x[keep], int((~keep).sum())


def _scatter_note(n_total: int, n_shown: int, n_bad: int, outside: float) -> str:
    parts = [f"n={n_total}" + (f", {n_shown} shown" if n_shown < n_total - n_bad else "")]
    if n_bad:
        parts.append(f"{n_bad} non-finite dropped")  # a diverged student must not look like an empty plot
    if outside > 0:
        parts.append(f"{100 * outside:.1f}% outside view")
    return "; ".join(parts)


def _draw_scatter(ax, title: str, pts: np.ndarray, n_total: int, n_bad: int, lim: np.ndarray, cap: int) -> None:
    inside = (pts[:, 0] >= lim[0]) & (pts[:, 0] <= lim[1]) & (pts[:, 1] >= lim[2]) & (pts[:, 1] <= lim[3])
    shown = _subsample(pts, cap)
    # rasterized: thousands of markers stay one bitmap layer should anyone save the figure as PDF/SVG
    ax.scatter(shown[:, 0], shown[:, 1], s=1.5, alpha=0.5, linewidths=0, color="tab:blue", rasterized=True)
    ax.set_xlim(lim[0], lim[1])
    ax.set_ylim(lim[2], lim[3])
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title, fontsize=10)
    outside = 1.0 - inside.mean() if len(pts) else 0.0
    ax.set_xlabel(_scatter_note(n_total, len(shown), n_bad, outside), fontsize=7, color="0.35")
    ax.tick_params(labelsize=7)


def scatter_panels(
    panels: list[tuple[str, np.ndarray]],
    path: PathLike,
    limits=None,
    max_points: int = 5000,
) -> Path:
    """Side-by-side scatters of (N, D) point sets sharing axes; for D > 2, the first panel's top-2 PCA plane.

    `limits` is (xmin, xmax, ymin, ymax) (or ((xmin, xmax), (ymin, ymax))) in plotted coordinates.
    """
    if not panels:
        raise ValueError("scatter_panels needs at least one panel")
    arrays = [_to_numpy(x) for _, x in panels]
    arrays = [a.reshape(a.shape[0], -1) if a.ndim != 2 else a for a in arrays]
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1 or dims.pop() < 2:
        raise ValueError(f"scatter panels need a common dimension >= 2, got {[a.shape for a in arrays]}")
    finite = [_finite_rows(a) for a in arrays]
    suptitle = None
    dim = arrays[0].shape[1]
    if dim > 2:
        mean, basis, share = _pca_basis(finite[0][0])
        finite = [((x - mean) @ basis, bad) for x, bad in finite]
        suptitle = f"D={dim}: projection on the first two principal components of '{panels[0][0]}'"
        if math.isfinite(share):
            suptitle += f" ({100 * share:.0f}% of its variance)"
    lim = _default_limits(finite[0][0]) if limits is None else np.asarray(limits, dtype=np.float64).ravel()
    if lim.shape != (4,):
        raise ValueError("limits must be (xmin, xmax, ymin, ymax)")

    # Height follows the equal-aspect data box, so wide projections don't leave bands of empty figure.
    box_h = float(np.clip(3.0 * (lim[3] - lim[2]) / max(lim[1] - lim[0], 1e-12), 1.2, 4.5))
    width = 3.6 * len(panels)
    fig = Figure(figsize=(width, box_h + (0.9 if suptitle is None else 1.3)), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, _), arr, (pts, bad) in zip(axes, panels, arrays, finite):
        _draw_scatter(ax, str(title), pts, arr.shape[0], bad, lim, max_points)
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, width=int(width * 15)), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------- image grid


def _as_images(x) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) in [0, 1]; (N, H, W) is taken as grayscale."""
    x = _to_numpy(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {x.shape}")
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)  # a NaN sample shows as black, not a crash
    return ((np.clip(x, -1.0, 1.0) + 1.0) / 2.0).transpose(0, 2, 3, 1)


def _tile(images: np.ndarray, nrow: int, pad: int) -> np.ndarray:
    """Tile (N, H, W, C) images, `nrow` per row, into one array with white `pad`-pixel gutters."""
    n, h, w, c = images.shape
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def _grid_for(x, nrow: int, max_images: int) -> np.ndarray:
    imgs = _as_images(x)[:max_images]
    if len(imgs) == 0:
        return np.ones((48, 48, 1))
    # Integer nearest-neighbour upscaling to >= 48 px per image: 8x8 digits stay readable and, drawn one array
    # pixel per screen pixel below, stay crisp instead of being blurred by a resampling filter.
    scale = max(1, math.ceil(48 / max(imgs.shape[1:3])))
    imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    return _tile(imgs, nrow, pad=2)


def image_grid_panels(
    panels: list[tuple[str, np.ndarray]],
    path: PathLike,
    nrow: int = 8,
    max_images: int = 64,
) -> Path:
    """Side-by-side image grids, one per panel; arrays are (N, C, H, W) floats in [-1, 1], C = 1 or 3."""
    if not panels:
        raise ValueError("image_grid_panels needs at least one panel")
    grids = [_grid_for(x, nrow, max_images) for _, x in panels]
    dpi, title_px, gap, min_slot = 100, 26, 16, 200
    # Lay out in exact pixels so one grid pixel is one PNG pixel; each slot is wide enough for its title.
    slots = [max(g.shape[1], min_slot) for g in grids]
    width = sum(slots) + gap * (len(grids) + 1)
    height = max(g.shape[0] for g in grids) + title_px + gap
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    left = gap
    for (title, _), grid, slot in zip(panels, grids, slots):
        gh, gw = grid.shape[:2]
        x0 = left + (slot - gw) / 2
        ax = fig.add_axes((x0 / width, (height - title_px - gh) / height, gw / width, gh / height))
        gray = grid.shape[2] == 1
        ax.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_axis_off()
        fig.text((left + slot / 2) / width, 1 - (title_px / 2) / height, str(title), ha="center", va="center",
                 fontsize=10)
        left += slot + gap
    return _save(fig, path, dpi=dpi)


# ----------------------------------------------------------------------------------------------------- curves


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _curve_keys(records: list[dict]) -> list[str]:
    keys: dict[str, None] = {}  # ordered set: subplots follow the order keys first appear in the log
    for r in records:
        for k, v in r.items():
            if k not in _SKIP_KEYS and _is_number(v):
                keys.setdefault(k)
    return list(keys)


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(it, value) pairs of the records that carry a finite `key`; losses logged every k iterations are sparse."""
    pts = [(float(r.get("it", i)), float(r[key])) for i, r in enumerate(records)
           if _is_number(r.get(key)) and math.isfinite(float(r[key]))]
    arr = np.array(pts, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _running_median(y: np.ndarray) -> tuple[np.ndarray, int]:
    """A centred running median over about a twentieth of the series (odd, at least 1 point) and that width: it
    neither lags a falling loss nor is dragged by a first outlying value, as an EMA from the start is."""
    half = len(y) // 40
    out = np.array([np.median(y[max(0, i - half): i + half + 1]) for i in range(len(y))])
    return out, 2 * half + 1


def curves(records: list[dict], path: PathLike, keys: list[str] | None = None) -> Path:
    """One subplot per loss key against `it`: the logged values faint, under their running median."""
    keys = _curve_keys(records) if keys is None else list(keys)
    if not keys:
        fig = Figure(figsize=(4.5, 2.5), dpi=110)
        fig.text(0.5, 0.5, "no training records", ha="center", va="center", color="0.4")
        return _save(fig, path)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, key) in enumerate(zip(axes, keys)):
        color = _COLORS[i % len(_COLORS)]
        x, y = _series(records, key)
        ax.set_title(key, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3, linewidth=0.5)
        if len(y) == 0:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        smooth, width = _running_median(y)
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8, label="logged")
        ax.plot(x, smooth, color=color, linewidth=1.5, marker="o" if len(y) == 1 else None,  # one point: no line
                label=f"running median of {width}" if width > 1 else "logged")
        if i == 0 and width > 1:
            ax.legend(fontsize=6, frameon=False)
        if y.min() > 0 and y.max() / y.min() > 100:  # log only where a linear axis would flatten the tail
            ax.set_yscale("log")
        ax.set_xlabel("it", fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ metric bars


def metric_bars(rows: list[dict], metric: str, path: PathLike) -> Path:
    """Horizontal bars of `metric` per row `name` (first row on top); rows lacking a finite value read 'n/a'."""
    names = [str(r.get("name", f"#{i}")) for i, r in enumerate(rows)]
    vals = [float(r[metric]) if _is_number(r.get(metric)) and math.isfinite(float(r[metric])) else None
            for r in rows]
    fig = Figure(figsize=(6.4, 1.2 + 0.38 * max(len(rows), 1)), dpi=110)
    ax = fig.add_subplot()
    ypos = np.arange(len(rows))
    known = [v for v in vals if v is not None]
    ax.barh(ypos, [v if v is not None else 0.0 for v in vals], color="tab:blue", height=0.6)
    top = max([abs(v) for v in known], default=1.0) or 1.0
    for y, v in zip(ypos, vals):
        label = "n/a" if v is None else f"{v:.4g}"
        ax.text(max(v or 0.0, 0.0) + 0.01 * top, y, label, va="center", fontsize=8)
    ax.set_yticks(ypos, names, fontsize=8)
    ax.invert_yaxis()  # reading order: first row at the top
    ax.set_xlim(min(0.0, *known) * 1.1 if known else 0.0, top * 1.18)
    ax.set_title(metric, fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3, linewidth=0.5)
    fig.tight_layout()
    return _save(fig, path)
