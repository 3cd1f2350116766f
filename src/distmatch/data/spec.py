"""DataSpec: everything needed to move between the user's data and the normalised tensors the networks see.

Normalised space: vectors are standardised per dimension to std SIGMA_DATA (the EDM preconditioning assumes it);
images are (N, C, H, W) float32 in [-1, 1].  The spec is stored with every trained model, so `to_user` can hand
samples back in the user's own layout, dtype and value range, and evaluation data can be normalised exactly as the
training data were.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..schedules import SIGMA_DATA

VECTOR_LAYOUT = "nd"
IMAGE_LAYOUTS = ("nhw", "nhwc", "nchw")
FINGERPRINT_CHARS = 16
_CHUNK_ROWS = 8192  # bounds the float64 working copy when converting large image sets


def normalised_sample_shape(sample_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """Per-sample shape after normalisation: (D,) for vectors, (C, H, W) for images."""
    sample_shape = tuple(int(s) for s in sample_shape)
    expected_rank = {"nd": 1, "nhw": 2, "nhwc": 3, "nchw": 3}
    if layout not in expected_rank:
        raise UserError(f"unknown data layout '{layout}': expected one of nd, nhw, nhwc, nchw")
    if len(sample_shape) != expected_rank[layout]:
        raise UserError(f"samples of shape {sample_shape} do not fit layout '{layout}'")
    if layout == "nhw":
        return (1, *sample_shape)
    if layout == "nhwc":
        h, w, c = sample_shape
        return (c, h, w)
    return sample_shape


def user_sample_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The inverse of normalised_sample_shape."""
    if layout == "nhw":
        return tuple(shape[1:])
    if layout == "nhwc":
        c, h, w = shape
        return (h, w, c)
    return tuple(shape)


def _to_nchw(arr: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhw":
        return arr[:, None]
    if layout == "nhwc":
        return arr.transpose(0, 3, 1, 2)
    return arr


def _from_nchw(arr: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhw":
        return arr[:, 0]
    if layout == "nhwc":
        return arr.transpose(0, 2, 3, 1)
    return arr


def _map_rows(arr: np.ndarray, fn, out_dtype) -> np.ndarray:
    """Apply fn to row chunks so a big data set never needs a full float64 copy."""
    first = fn(arr[:_CHUNK_ROWS])
    out = np.empty((len(arr), *first.shape[1:]), dtype=out_dtype)
    out[:len(first)] = first
    for start in range(_CHUNK_ROWS, len(arr), _CHUNK_ROWS):
        out[start:start + _CHUNK_ROWS] = fn(arr[start:start + _CHUNK_ROWS])
    return out


def _cast_to(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    return arr.astype(dtype)


def _python_number(value, integer: bool):
    return int(value) if integer else float(value)


def infer_value_range(arr: np.ndarray, source: str) -> list:
    """The [lo, hi] an image set lives in, by the documented rule (uint8, 0..255 ints, [0,1], [-1,1], observed)."""
    if arr.dtype == np.uint8:
        return [0, 255]
    integer = arr.dtype.kind in "iu"
    lo, hi = arr.min(), arr.max()
    if integer and 0 <= lo and hi <= 255:
        return [0, 255]
    if not integer and 0 <= lo and hi <= 1:
        return [0.0, 1.0]
    if not integer and -1 <= lo and hi <= 1:
        return [-1.0, 1.0]
    if lo == hi:
        raise UserError(f"data '{source}': every pixel value is {lo}, so the images have no value range to scale")
    return [_python_number(lo, integer), _python_number(hi, integer)]


def standardisation(arr: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-dimension shift (mean) and scale (std / SIGMA_DATA); a constant dimension keeps scale 1."""
    values = arr.astype(np.float64, copy=False)
    mean = values.mean(axis=0)
    scale = values.std(axis=0) / SIGMA_DATA
    constant = values.max(axis=0) == values.min(axis=0)  # exact test: float noise in std would miss it
    scale[constant] = 1.0
    return mean.tolist(), scale.tolist()


def data_fingerprint(arr: np.ndarray, labels: np.ndarray | None) -> str:
    """Hex sha256 prefix of the raw bytes (+ dtype, shape and labels), so caches notice any change."""
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(np.ascontiguousarray(arr).data)
    if labels is not None:
        labels = np.asarray(labels)
        digest.update(f"labels{labels.dtype.str}".encode())
        digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def _jsonable(name):
    return name.item() if isinstance(name, np.generic) else name


@dataclass
class DataSpec:
    kind: str                         # "vector" | "image"
    shape: tuple[int, ...]            # per-sample shape of the normalised tensor
    source: str                       # preset name or absolute path
    layout: str                       # "nd" | "nhw" | "nhwc" | "nchw"
    dtype: str                        # numpy dtype name of the user's data
    value_range: list | None = None   # images: [lo, hi]
    range_fixed: bool = False         # images: value_range is a wrapped network's own, which data are read in
    shift: list[float] | None = None  # vectors: per-dim mean of the training data
    scale: list[float] | None = None  # vectors: per-dim std / SIGMA_DATA (1 for constant dims)
    class_names: list = field(default_factory=list)
    fingerprint: str = ""
    n: int = 0

    @classmethod
    def fit(cls, raw_array: np.ndarray, labels, class_names, source: str, layout: str) -> "DataSpec":
        kind = "vector" if layout == VECTOR_LAYOUT else "image"
        common = dict(kind=kind, shape=normalised_sample_shape(raw_array.shape[1:], layout), source=str(source),
                      layout=layout, dtype=raw_array.dtype.name,
                      class_names=[_jsonable(c) for c in (class_names or [])],
                      fingerprint=data_fingerprint(raw_array, labels), n=int(len(raw_array)))
        if kind == "vector":
            shift, scale = standardisation(raw_array)
            return cls(**common, shift=shift, scale=scale)
        return cls(**common, value_range=infer_value_range(raw_array, str(source)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Per-sample shape in the user's layout."""
        return user_sample_shape(self.shape, self.layout)

    def normalise(self, user_array: np.ndarray, layout: str | None = None) -> torch.Tensor:
        """User data -> normalised float32 tensor.  `layout` is the array's own layout when it differs from the
        spec's (e.g. evaluation images stored NCHW for a model trained on NHWC)."""
        arr = np.asarray(user_array)
        layout = layout or self.layout
        if arr.dtype.kind not in "fiu":
            raise UserError(f"data for '{self.source}' has dtype {arr.dtype}; expected numbers")
        if arr.ndim < 2 or normalised_sample_shape(arr.shape[1:], layout) != tuple(self.shape):
            raise UserError(f"data has samples of shape {arr.shape[1:]} but '{self.source}' has {self.sample_shape}")
        if self.kind == "vector":
            shift, scale = np.asarray(self.shift), np.asarray(self.scale)
            out = _map_rows(arr, lambda a: (a.astype(np.float64) - shift) / scale, np.float32)
        else:
            lo, hi = self.value_range
            out = _map_rows(_to_nchw(arr, layout), lambda a: 2 * (a.astype(np.float64) - lo) / (hi - lo) - 1,
                            np.float32)
        return torch.from_numpy(out)

    def to_user(self, x: torch.Tensor) -> np.ndarray:
        """Normalised tensor -> the user's layout, dtype and value range (exact inverse of normalise)."""
        arr = x.detach().cpu().numpy()
        if tuple(arr.shape[1:]) != tuple(self.shape):
            raise ValueError(f"expected samples of shape {tuple(self.shape)}, got {tuple(arr.shape[1:])}")
        dtype = np.dtype(self.dtype)
        if self.kind == "vector":
            shift, scale = np.asarray(self.shift), np.asarray(self.scale)
            return _map_rows(arr, lambda a: _cast_to(a.astype(np.float64) * scale + shift, dtype), dtype)
        lo, hi = self.value_range

        def back(a):
            values = np.clip((a.astype(np.float64) + 1) / 2 * (hi - lo) + lo, lo, hi)
            return _cast_to(values, dtype)
        return np.ascontiguousarray(_from_nchw(_map_rows(arr, back, dtype), self.layout))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        missing = [k for k in ("kind", "shape", "source", "layout", "dtype") if k not in d]
        if missing:
            raise UserError(f"data spec is missing {', '.join(missing)}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["shape"] = tuple(int(s) for s in d["shape"])
        return cls(**known)

    def describe(self) -> str:
        """What the samples are; where they came from when the spec was read from data (a wrapped network's has no
        data behind it)."""
        classes = f"{self.num_classes} classes" if self.class_names else "unlabeled"
        origin = f"{self.n} from {self.source}, " if self.source else ""
        if self.kind == "vector":
            return f"vectors of dimension {self.shape[0]} ({self.dtype}; {origin}{classes})"
        c, h, w = self.shape
        lo, hi = self.value_range
        return f"images {c}x{h}x{w} ({self.dtype} {self.layout}, values in [{lo}, {hi}]; {origin}{classes})"
