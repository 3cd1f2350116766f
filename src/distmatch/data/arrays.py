"""Reading the user's data into one checked raw numpy array (+ its original labels) and a layout.

Accepted: .npy, .npz, MNIST idx files (gzipped or plain) and folders of images (sub-folders = classes).
Nothing here normalises; DataSpec does, so training and evaluation read data the same way.

Layout of a rank-4 array: (N, H, W, C) when only the last dim is 1, 3 or 4, (N, C, H, W) when only dim 1 is.
When both are (e.g. (N, 3, 4, 3)) NHWC is assumed; pass layout="nchw" (or "nhwc") to say which it is.
"""
from __future__ import annotations

import gzip
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ACCEPTED = ".npy, .npz, MNIST idx files (gzipped or plain) or a folder of images (png, jpg, bmp, gif, webp, tiff)"
LAYOUT_CHOICES = ("auto", "nhwc", "nchw")
CHANNEL_COUNTS = (1, 3, 4)
DATA_KEYS = ("images", "x", "data", "arr_0")
LABEL_KEYS = ("labels", "y")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
NPY_SIGNATURE = b"\x93NUMPY"
GRAYSCALE_MODES = ("1", "L")  # float "F" and 16/32-bit "I*" modes are kept at their depth, separately


@dataclass
class RawData:
    array: np.ndarray                 # the user's data, unchanged (N, ...)
    labels: np.ndarray | None         # original label values (int64 or str), or None
    layout: str                       # "nd" | "nhw" | "nhwc" | "nchw"
    class_names: list | None = None   # fixed class list (presets); None = the sorted distinct labels


def read_data(path: str | Path, layout: str = "auto") -> RawData:
    """Read a file or image folder.  `layout` only settles rank-4 arrays from .npy/.npz files."""
    if layout not in LAYOUT_CHOICES:
        raise UserError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUT_CHOICES)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"no such file or directory: {path}")
    if path.is_dir():
        array, labels = read_image_folder(path)
        layout = "nhwc"
    else:
        array, labels = _read_file(path)
        if not path.name.lower().endswith((".npy", ".npz")):
            layout = "auto"  # idx files are always (N, H, W)
    array = check_array(array, path)
    labels = check_labels(labels, len(array), path)
    return RawData(array, labels, infer_layout(array.shape, layout, path))


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    name = path.name.lower()
    if name.endswith((".npy", ".npz")):
        return _read_numpy(path)
    head = _read_bytes(path, limit=4)
    looks_idx = len(head) == 4 and head[:2] == b"\0\0" and head[2] == 0x08
    if looks_idx or "idx" in name or "ubyte" in name:
        return _read_idx_images(path)
    raise UserError(f"{path}: unknown kind of data file; accepted: {ACCEPTED}")


# ---------------------------------------------------------------- numpy files

def _read_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not _read_bytes(path, limit=6).startswith((NPY_SIGNATURE, b"PK\x03\x04", b"PK\x05\x06")):
        raise UserError(f"{path}: not a .npy/.npz file (it starts with neither the .npy nor the zip signature)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded as archive:
            return _arrays_from_npz(archive, path)
    except UserError:
        raise
    except ValueError as e:
        if "Object arrays" in str(e):
            raise UserError(f"{path}: holds Python objects (an object array); save plain numbers instead") from None
        raise UserError(f"{path}: not a readable .npy/.npz file ({_short(e)})") from None
    except Exception as e:  # zip, EOF and header errors all mean the same thing to the user
        raise UserError(f"{path}: not a readable .npy/.npz file ({_short(e)})") from None


def _arrays_from_npz(archive, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    keys = list(archive.files)
    data_key = next((k for k in DATA_KEYS if k in keys), None)
    if data_key is None:
        others = [k for k in keys if k not in LABEL_KEYS]
        if len(others) != 1:
            raise UserError(f"{path}: cannot tell which array is the data: expected a key among "
                            f"{', '.join(DATA_KEYS)} or a single array; found {', '.join(keys) or 'none'}")
        data_key = others[0]
    label_key = next((k for k in LABEL_KEYS if k in keys), None)
    if unread := [k for k in keys if k not in (data_key, label_key)]:
        print(f"warning: {path}: array(s) {', '.join(unread)} are not read: the data are '{data_key}'"
              f"{'' if label_key else ', with no labels'} (labels are read from {' or '.join(LABEL_KEYS)})",
              file=sys.stderr)
    return archive[data_key], (archive[label_key] if label_key else None)


def _short(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------- MNIST idx files

def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read ({_short(e)})") from None


def parse_idx(raw: bytes, path: Path, expected_magic: int) -> np.ndarray:
    what = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise UserError(f"{path}: truncated idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        hint = "; pass the images file, the labels file beside it is found automatically" \
            if magic == IDX_LABELS_MAGIC else ""
        raise UserError(f"{path}: not an MNIST idx {what} file (magic 0x{magic:08x}, "
                        f"expected 0x{expected_magic:08x}){hint}")
    rank = magic & 0xFF
    header = 4 + 4 * rank
    if len(raw) < header:
        raise UserError(f"{path}: truncated idx file (header cut short)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    count = int(np.prod(dims))
    if len(raw) - header < count:
        raise UserError(f"{path}: truncated idx file: the header promises {count} values of shape {tuple(dims)}, "
                        f"the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def _labels_file_beside(path: Path) -> Path | None:
    """MNIST's labels file for an images file: '...images-idx3...' -> '...labels-idx1...', .gz or not."""
    name = re.sub(r"images([.-])idx3", r"labels\1idx1", path.name)
    if name == path.name:
        return None
    other = name[:-3] if name.endswith(".gz") else name + ".gz"
    return next((p for p in (path.with_name(name), path.with_name(other)) if p.is_file()), None)


def _read_idx_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images = parse_idx(_read_bytes(path), path, IDX_IMAGES_MAGIC)
    labels_path = _labels_file_beside(path)
    if labels_path is None:
        return images, None
    labels = parse_idx(_read_bytes(labels_path), labels_path, IDX_LABELS_MAGIC)
    if len(labels) != len(images):
        raise UserError(f"{labels_path}: has {len(labels)} labels but {path.name} has {len(images)} images")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------- image folders

def _image_files(folder: Path, deep: bool = False) -> list[Path]:
    """The images in `folder` (`deep`: in its sub-folders too, as torchvision's ImageFolder reads a class); hidden
    files and folders are skipped."""
    files = folder.rglob("*") if deep else folder.iterdir()
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _labelled_files(folder: Path) -> list[tuple[Path, str | None]]:
    top = _image_files(folder)
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    class_dirs = [d for d in subs if _image_files(d, deep=True)]
    if class_dirs and (empty := [d.name for d in subs if d not in class_dirs]):
        print(f"warning: {folder}: sub-folder(s) {', '.join(empty[:5])} hold no images and are not classes",
              file=sys.stderr)
    if top and class_dirs:
        raise UserError(f"{folder}: holds images at the top level ({top[0].name}, ...) and class sub-folders "
                        f"({', '.join(d.name for d in class_dirs[:3])}, ...); put every image in a class folder, "
                        f"or use no sub-folders")
    if class_dirs:
        return [(f, d.name) for d in class_dirs for f in _image_files(d, deep=True)]
    if not top:
        raise UserError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} at the top level "
                        f"and in class sub-folders)")
    return [(f, None) for f in top]


def _open_image(path: Path) -> tuple[np.ndarray, str | None]:
    """(H, W) grayscale (uint8; uint16 for 16-bit files, float32 for float ones), (H, W, 3) uint8 colour, or
    (H, W, 4) uint8 with an alpha channel that is not fully opaque (an opaque one carries nothing and is dropped);
    and what was lost, if anything."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)  # upright, as a viewer shows it (and diffusers' load_image reads it)
            if img.mode.startswith("I"):  # 16/32-bit grayscale: kept at 16 bits
                wide = np.asarray(img).astype(np.int64)
                clipped = "with values outside 0..65535, clipped" if wide.min() < 0 or wide.max() > 65535 else None
                return np.clip(wide, 0, 65535).astype(np.uint16), clipped
            if img.mode == "F":  # 32-bit float grayscale: kept as floats, in their own range
                return np.asarray(img, dtype=np.float32), None
            if img.mode in GRAYSCALE_MODES:
                return np.asarray(img.convert("L"), dtype=np.uint8), None
            if "A" in img.getbands() or "transparency" in img.info:
                rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
                return (rgba if (rgba[..., 3] < 255).any() else rgba[..., :3]), None
            return np.asarray(img.convert("RGB"), dtype=np.uint8), None
    except Exception as e:  # PIL raises many kinds for damaged files
        raise UserError(f"cannot read image {path}: {_short(e)}") from None


def _as_one_kind(pixels: list[np.ndarray], folder: Path) -> np.ndarray:
    """The images stacked as (N, H, W, C) of one depth and channel count, each widening said once, with a count:
    8-bit images among 16-bit ones are scaled to 16 bits, grayscale among colour becomes RGB, and images without
    transparency among those with it get an opaque alpha channel. Nothing is lost on the way."""
    floats = sum(p.dtype.kind == "f" for p in pixels)
    if 0 < floats < len(pixels):
        raise UserError(f"{folder}: holds {floats} floating-point image(s) among {len(pixels) - floats} integer ones; "
                        "their value ranges cannot be matched: keep one kind in the folder")
    deep = sum(p.dtype == np.uint16 for p in pixels)
    if 0 < deep < len(pixels):
        print(f"warning: {folder}: scaled {len(pixels) - deep} 8-bit image(s) to 16 bits to match the {deep} "
              "16-bit one(s)", file=sys.stderr)
    if deep:
        pixels = [p.astype(np.uint16) * 257 if p.dtype == np.uint8 else p for p in pixels]
    pixels = [p[..., None] if p.ndim == 2 else p for p in pixels]
    channels = max(p.shape[-1] for p in pixels)
    grayscale = sum(p.shape[-1] == 1 for p in pixels)
    if channels > 1 and grayscale:
        print(f"warning: {folder}: converted {grayscale} grayscale image(s) to RGB to match the "
              f"{len(pixels) - grayscale} colour one(s)", file=sys.stderr)
        pixels = [np.repeat(p, 3, axis=2) if p.shape[-1] == 1 else p for p in pixels]
    if channels == 4:
        opaque = sum(p.shape[-1] == 3 for p in pixels)
        if opaque:
            print(f"warning: {folder}: gave {opaque} image(s) without transparency an opaque alpha channel, to "
                  f"match the {len(pixels) - opaque} with it", file=sys.stderr)
        full = np.iinfo(pixels[0].dtype).max
        pixels = [np.concatenate([p, np.full(p.shape[:2] + (1,), full, p.dtype)], 2) if p.shape[-1] == 3 else p
                  for p in pixels]
    return np.stack(pixels)


def read_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H, W, C) uint8 (or uint16) images and the folder-name labels (None without class sub-folders)."""
    files = _labelled_files(folder)
    pixels, lost = [], Counter()
    for path, _ in files:
        img, loss = _open_image(path)
        if loss:
            lost[loss] += 1
        if pixels and img.shape[:2] != pixels[0].shape[:2]:
            first = files[0][0]
            raise UserError(f"{folder}: images differ in size: {first.name} is {_size(pixels[0])}, "
                            f"{path.relative_to(folder)} is {_size(img)}; resize them to one size")
        pixels.append(img)
    for loss, count in lost.items():
        print(f"warning: {folder}: {count} image(s) {loss}", file=sys.stderr)
    labels = None if files[0][1] is None else np.array([label for _, label in files])
    return _as_one_kind(pixels, folder), labels


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


# ---------------------------------------------------------------- checks

def check_array(array: np.ndarray, path: Path) -> np.ndarray:
    kind = array.dtype.kind
    if kind not in "fiu":
        what = {"O": "Python objects", "b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes",
                "V": "structured records"}.get(kind, f"dtype {array.dtype}")
        raise UserError(f"{path}: holds {what}; expected an array of integers or floats")
    if array.ndim == 0:
        raise UserError(f"{path}: holds a single number, not an array of samples")
    if array.shape[0] == 0 or array.size == 0:
        raise UserError(f"{path}: the data array is empty (shape {array.shape})")
    if array.ndim == 1 or array.ndim > 4:
        raise UserError(f"{path}: wrong rank: shape {array.shape}; expected (N, D) vectors, (N, H, W) images "
                        f"or (N, H, W, C) / (N, C, H, W) images")
    if kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise UserError(f"{path}: holds {bad} NaN or infinite value(s); remove or replace them")
        if (top := float(np.abs(array).max())) > 1e37:  # float32 ends at 3e38: samples a little wider overflow
            raise UserError(f"{path}: holds values as large as {top:.3g}, beyond what distmatch computes in "
                            "(float32): rescale them")
    return array


def check_labels(labels: np.ndarray | None, n: int, path: Path) -> np.ndarray | None:
    """1-D, length-n labels as int64 or str; floats are accepted only when they are whole numbers."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{path}: labels have shape {labels.shape} but there are {n} samples; "
                        f"expected a 1-D array of length {n}")
    kind = labels.dtype.kind
    if kind in "biu":
        return labels.astype(np.int64)
    if kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    if kind == "U":
        return labels
    if kind == "S":
        return labels.astype(str)
    raise UserError(f"{path}: labels must be integers or strings, found dtype {labels.dtype}")


def infer_layout(shape: tuple[int, ...], layout: str, path: Path) -> str:
    rank = len(shape)
    if rank == 2:
        if layout != "auto":
            raise UserError(f"{path}: layout '{layout}' needs a rank-4 array, the data have shape {shape}")
        return "nd"
    if rank == 3:
        chosen, height, width = "nhw", shape[1], shape[2]
        if layout != "auto":
            raise UserError(f"{path}: layout '{layout}' needs a rank-4 array, the data have shape {shape}")
    else:
        chosen = _rank4_layout(shape, layout, path)
        height, width = (shape[1], shape[2]) if chosen == "nhwc" else (shape[2], shape[3])
    if height < 2 or width < 2:
        raise UserError(f"{path}: images of {height}x{width} pixels (shape {shape}) are too small; "
                        f"need at least 2x2")
    return chosen


def _rank4_layout(shape: tuple[int, ...], layout: str, path: Path) -> str:
    last_is_channel, first_is_channel = shape[3] in CHANNEL_COUNTS, shape[1] in CHANNEL_COUNTS
    if layout == "auto":
        if last_is_channel and first_is_channel:  # tiny images: either axis could hold the channels
            print(f"warning: {path}: shape {shape} reads as (N, C, H, W) or (N, H, W, C); taken as (N, H, W, C) "
                  f"({shape[3]} channels)", file=sys.stderr)
        if last_is_channel:
            return "nhwc"
        if first_is_channel:
            return "nchw"
        raise UserError(f"{path}: cannot find the channel axis of shape {shape}: expected 1, 3 or 4 channels "
                        f"first (N, C, H, W) or last (N, H, W, C)")
    channels = shape[3] if layout == "nhwc" else shape[1]
    if channels not in CHANNEL_COUNTS:
        raise UserError(f"{path}: layout '{layout}' gives {channels} channels for shape {shape}; "
                        f"expected 1, 3 or 4")
    return layout
