"""Data in: presets or the user's files, normalised for the networks, with the DataSpec that undoes it.

    load_data("8gaussians")                      # fit a spec on the training split
    load_data("eval.npz", spec=model_spec)       # normalise new data exactly like a model's training data
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..teachers.gmm import GaussianMixture
from .arrays import RawData, check_array, check_labels, infer_layout, read_data
from .presets import PRESETS, SPLIT_SEEDS, list_presets, load_preset, preset_mixture
from .spec import DataSpec, data_fingerprint, infer_value_range, normalised_sample_shape

__all__ = ["Dataset", "DataSpec", "load_data", "from_arrays", "is_preset", "list_presets"]

_CLASS_PREVIEW = 10


@dataclass
class Dataset:
    x: torch.Tensor                   # normalised float32: (N, D) or (N, C, H, W)
    labels: torch.Tensor | None       # int64 class indices 0..K-1 (index into spec.class_names), or None
    spec: DataSpec
    mixture: GaussianMixture | None   # mixture presets: the exact mixture in normalised space; else None


def dataset_fingerprint(data: Dataset) -> str:
    """A fingerprint of a data set as the networks see it (its normalised values and labels): what a resumed run
    must train on again, and the key of anything cached for it."""
    labels = data.labels.numpy() if data.labels is not None else None
    return data_fingerprint(data.x.numpy(), labels)


def is_preset(source: str) -> bool:
    return source in PRESETS


def load_data(source: str, split: str = "train", spec: DataSpec | None = None, layout: str = "auto") -> Dataset:
    """Load a preset (split "train"/"test") or a file/folder (split ignored: the whole file).

    Without `spec` one is fitted to these data; with it (a trained model's) the data are checked against it and
    normalised by it, labels mapped through its class_names.  `layout` settles ambiguous rank-4 arrays.
    """
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split '{split}': choose train or test")
    raw, origin = _read_source(str(source), split, layout)
    return _dataset(raw, origin, spec, preset_mixture(source) if is_preset(source) else None)


def from_arrays(x, labels=None, spec: DataSpec | None = None, name: str = "in-memory data") -> Dataset:
    """An in-memory array (numpy or torch, any documented layout) and optional labels, checked and normalised
    exactly like a file holding them."""
    x, labels = as_numpy(x), (as_numpy(labels) if labels is not None else None)
    array = check_array(x, name)
    labels = check_labels(labels, len(array), name)
    return _dataset(RawData(array, labels, infer_layout(array.shape, "auto", name)), name, spec, None)


def as_numpy(a) -> np.ndarray:
    """An array or tensor as numpy (bfloat16, which numpy lacks, as float32)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        return (a.float() if a.dtype == torch.bfloat16 else a).numpy()
    return np.asarray(a)


def _dataset(raw: RawData, origin: str, spec: DataSpec | None, mixture) -> Dataset:
    if spec is None:
        spec = DataSpec.fit(raw.array, raw.labels, _class_names(raw), origin, raw.layout)
    else:
        _check_compatible(raw, spec, origin)
    labels = _label_indices(raw.labels, spec.class_names, origin)
    x = _scale_spec(raw, spec, origin).normalise(raw.array, layout=raw.layout)
    if mixture is not None:
        mixture = mixture.affine(torch.tensor(spec.shift), torch.tensor(spec.scale))
    return Dataset(x, labels, spec, mixture)


def _scale_spec(raw: RawData, spec: DataSpec, origin: str) -> DataSpec:
    """The spec that maps these data into the model's space. A foreign teacher (a diffusers folder, a network
    wrapped in Python) works on [-1, 1] images and knows no data: the data keep their own value range, mapped there,
    as when it is distilled, unless the network was wrapped with its own value_range."""
    if spec.kind == "image" and not spec.source:
        fitted = DataSpec.fit(raw.array, None, [], origin, raw.layout)
        if not spec.range_fixed:
            return fitted
        check_in_range(float(raw.array.min()), float(raw.array.max()), spec.value_range, origin)
        return dataclasses.replace(fitted, value_range=list(spec.value_range), range_fixed=True)
    if _other_scale(raw, spec):  # 0..255 pixels are not [0, 1] floats, nor 16-bit ones: each read in its own range
        return dataclasses.replace(spec, value_range=_own_range(raw.array, spec, origin))
    return spec


def check_in_range(lo: float, hi: float, value_range, origin: str) -> None:
    """Images read in a wrapped network's declared value range must lie in it (1 % slack)."""
    a, b = value_range
    if lo < a - 0.01 * (b - a) or hi > b + 0.01 * (b - a):
        raise UserError(f"data '{origin}' hold values from {lo:g} to {hi:g}, outside the teacher's value_range "
                        f"({a:g}, {b:g}): give wrap_teacher the range your images are in")
    if hi - lo < 0.05 * (b - a):  # inside, but as 0..1 floats are inside 0..255: likely another scale
        print(f"warning: data '{origin}' span only {lo:g} to {hi:g} of the teacher's value_range ({a:g}, {b:g}); "
              "if they are on another scale (0..1 for 0..255), rescale them or give wrap_teacher their range",
              file=sys.stderr)


def in_value_range(data: Dataset, value_range, origin: str) -> Dataset:
    """Images normalised by their own range, read again in a wrapped network's declared one."""
    lo, hi = data.spec.value_range
    raw = (data.x.double() + 1) / 2 * (hi - lo) + lo
    check_in_range(float(raw.min()), float(raw.max()), value_range, origin)
    a, b = value_range
    x = (2 * (raw - a) / (b - a) - 1).float()
    spec = dataclasses.replace(data.spec, value_range=list(value_range), range_fixed=True)
    return Dataset(x, data.labels, spec, data.mixture)


def _read_source(source: str, split: str, layout: str) -> tuple[RawData, str]:
    if is_preset(source):
        return load_preset(source, split), source
    path = Path(source).expanduser()
    if not path.exists():
        if "/" in source or "\\" in source or path.suffix:
            raise UserError(f"no such file or directory: {source}")
        raise UserError(f"unknown data '{source}': not a preset ({', '.join(PRESETS)}) and no such file")
    return read_data(path, layout), str(path.resolve())


def _class_names(raw: RawData) -> list:
    if raw.class_names is not None:
        return list(raw.class_names)
    if raw.labels is None:
        return []
    return np.unique(raw.labels).tolist()


def _check_compatible(raw: RawData, spec: DataSpec, origin: str) -> None:
    kind = "vector" if raw.layout == "nd" else "image"
    if kind != spec.kind:
        raise UserError(f"data '{origin}' holds {kind}s but the model was trained on {spec.kind}s")
    sample_shape = tuple(raw.array.shape[1:])
    if normalised_sample_shape(sample_shape, raw.layout) != tuple(spec.shape):
        raise UserError(f"data '{origin}' has samples of shape {sample_shape} "
                        f"but the model was trained on {spec.sample_shape}")
    if _other_scale(raw, spec):
        lo, hi = spec.value_range
        print(f"warning: data '{origin}' are {raw.array.dtype} images from {raw.array.min():g} to "
              f"{raw.array.max():g}, but the model was trained on {spec.dtype} ones in {lo:g}..{hi:g}; reading them "
              f"in their own value range {_own_range(raw.array, spec, origin)}", file=sys.stderr)


def _other_scale(raw: RawData, spec: DataSpec) -> bool:
    """Images on another scale than the model's data: integers for a model trained on floats or the reverse (PNGs
    against a float .npy), or values far outside the model's range or filling under 5 % of it (16-bit pixels for
    an 8-bit model, 8-bit for a 16-bit one) where their own range differs from it."""
    if raw.layout == "nd" or not spec.source:
        return False
    if (raw.array.dtype.kind == "f") != (np.dtype(spec.dtype).kind == "f"):
        return True
    (lo, hi), a, b = spec.value_range, float(raw.array.min()), float(raw.array.max())
    apart = a < lo - 0.5 * (hi - lo) or b > hi + 0.5 * (hi - lo) or b - a < 0.05 * (hi - lo)
    return apart and a < b and infer_value_range(raw.array, "") != list(spec.value_range)


def _own_range(arr: np.ndarray, spec: DataSpec, origin: str) -> list:
    """The value range images of another number kind than the model's data are read in: their own by the documented
    rule (uint8: 0..255; floats in [0, 1] or [-1, 1]), floats beyond those read in the model's range if they fit it
    (0..255 floats for a model of uint8 images)."""
    own = infer_value_range(arr, origin)
    lo, hi = spec.value_range
    if arr.dtype.kind == "f" and own not in ([0.0, 1.0], [-1.0, 1.0]) and lo <= arr.min() and arr.max() <= hi:
        return list(spec.value_range)
    return own


def _label_indices(labels: np.ndarray | None, class_names: list, origin: str) -> torch.Tensor | None:
    """Original label values -> indices into class_names.  An unlabeled spec (unconditional model) drops them."""
    if labels is None or not class_names:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    # a model whose classes are numbers (a diffusers teacher's 0..C-1) reads the class sub-folders named 0..C-1
    for i, name in enumerate(class_names):
        index.setdefault(str(name), i)
    try:
        indices = [index[value] for value in labels.tolist()]
    except KeyError as e:
        preview = ", ".join(str(c) for c in class_names[:_CLASS_PREVIEW])
        more = ", ..." if len(class_names) > _CLASS_PREVIEW else ""
        raise UserError(f"data '{origin}' has label {e.args[0]!r}, which is not one of the classes "
                        f"({preview}{more})") from None
    return torch.tensor(indices, dtype=torch.int64)
