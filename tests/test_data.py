"""Data loading: round trips through DataSpec, presets, every file format, and a UserError for each bad input."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from distmatch.data import DataSpec, is_preset, list_presets, load_data
from distmatch.data.arrays import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from distmatch.errors import UserError


def _save_npy(tmp_path, array, name="data.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


def _raises_one_line(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((300, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 100, 0]).astype(dtype)
    a[:, 4] = 7.0  # a constant dimension must not divide by zero
    data = load_data(str(_save_npy(tmp_path, a)))
    assert data.x.dtype == torch.float32 and data.x.shape == (300, 5)
    assert data.spec.scale[4] == 1.0
    assert torch.allclose(data.x[:, :4].std(0, unbiased=False), torch.full((4,), 0.5), atol=1e-4)
    back = data.spec.to_user(data.x)
    assert back.dtype == dtype and back.shape == a.shape
    np.testing.assert_allclose(back, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,layout,normalised", [
    ((10, 6, 7), "nhw", (1, 6, 7)),
    ((10, 6, 7, 3), "nhwc", (3, 6, 7)),
    ((10, 3, 6, 7), "nchw", (3, 6, 7)),
])
def test_uint8_image_round_trip_is_exact(tmp_path, shape, layout, normalised):
    a = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    data = load_data(str(_save_npy(tmp_path, a)))
    assert data.spec.layout == layout and data.spec.value_range == [0, 255]
    assert data.x.shape == (10, *normalised)
    assert data.x.min() >= -1 and data.x.max() <= 1
    back = data.spec.to_user(data.x)
    assert back.dtype == np.uint8 and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("lo,hi,expected", [(0.0, 1.0, [0.0, 1.0]), (-1.0, 1.0, [-1.0, 1.0]),
                                            (-3.0, 5.0, None)])
def test_float_image_round_trip(tmp_path, lo, hi, expected):
    a = np.random.default_rng(2).uniform(lo, hi, size=(8, 5, 5)).astype(np.float32)
    spec = load_data(str(_save_npy(tmp_path, a))).spec
    assert spec.value_range == (expected or [float(a.min()), float(a.max())])
    back = spec.to_user(spec.normalise(a))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, a, atol=1e-5)


@pytest.mark.parametrize("values,expected", [((0, 200), [0, 255]), ((-300, 1000), [-300, 1000])])
def test_integer_image_round_trip_is_exact(tmp_path, values, expected):
    a = np.random.default_rng(3).integers(*values, size=(6, 4, 4)).astype(np.int64)
    a[0, 0, :2] = values  # pin the observed range
    spec = load_data(str(_save_npy(tmp_path, a))).spec
    assert spec.value_range == expected and spec.dtype == "int64"
    back = spec.to_user(spec.normalise(a))
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, a)


def test_to_user_clips_images_and_spec_survives_json(tmp_path):
    a = np.random.default_rng(4).integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    spec = load_data(str(_save_npy(tmp_path, a))).spec
    clipped = spec.to_user(torch.full((2, 1, 5, 5), 3.0))
    assert (clipped == 255).all()
    again = DataSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.num_classes == 0 and "5x5" in again.describe()


def test_ambiguous_rank4_defaults_to_nhwc_unless_told(tmp_path):
    a = np.zeros((5, 3, 4, 3), dtype=np.uint8)
    path = str(_save_npy(tmp_path, a))
    assert load_data(path).spec.shape == (3, 3, 4)
    told = load_data(path, layout="nchw")
    assert told.spec.layout == "nchw" and told.spec.shape == (3, 4, 3)


# ---------------------------------------------------------------- presets

def test_presets_shapes_splits_and_determinism():
    assert "8gaussians" in list_presets() and is_preset("digits") and not is_preset("nope")
    train, test = load_data("moons"), load_data("moons", "test")
    assert train.x.shape == (20000, 2) and test.x.shape == (5000, 2)
    assert train.labels is None and train.mixture is None
    assert torch.equal(load_data("moons").x, train.x)
    digits = load_data("digits")
    assert digits.x.shape == (1437, 1, 8, 8) and digits.spec.class_names == list(range(10))
    digits_test = load_data("digits", "test", spec=digits.spec)
    assert digits_test.x.shape == (360, 1, 8, 8) and digits_test.labels.max() == 9
    assert digits_test.spec is digits.spec


def test_mixture_preset_is_in_normalised_space():
    data = load_data("25gaussians-labeled")
    assert data.spec.num_classes == 25 and data.mixture.num_classes == 25
    assert data.labels.min() == 0 and data.labels.max() == 24
    torch.testing.assert_close(data.mixture.means.mean(0).float(), data.x.mean(0), atol=0.02, rtol=0)
    drawn, _ = data.mixture.sample(20000, torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn.std(0), data.x.std(0), atol=0.02, rtol=0)
    assert load_data("8gaussians").labels is None


# ---------------------------------------------------------------- file formats

def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_round_trip_with_labels_beside(tmp_path, gzipped):
    images = np.random.default_rng(6).integers(0, 256, size=(7, 4, 5), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    suffix = ".gz" if gzipped else ""
    write = gzip.compress if gzipped else bytes
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(write(_idx_bytes(IDX_IMAGES_MAGIC, images)))
    (tmp_path / f"train-labels-idx1-ubyte{suffix}").write_bytes(write(_idx_bytes(IDX_LABELS_MAGIC, labels)))
    data = load_data(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
    assert data.spec.layout == "nhw" and data.spec.class_names == [1, 2, 3, 4, 5, 9]
    assert [data.spec.class_names[i] for i in data.labels] == labels.tolist()
    np.testing.assert_array_equal(data.spec.to_user(data.x), images)


def test_npz_keys_and_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 3)), y=np.array(["b", "a", "b", "c"]))
    data = load_data(str(path))
    assert data.spec.class_names == ["a", "b", "c"] and data.labels.tolist() == [1, 0, 1, 2]
    np.savez(path, anything=np.ones((4, 3)))
    assert load_data(str(path)).labels is None


def _write_png(path, size, mode="L", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 10, 20)).save(path)


def test_image_folder_with_classes(tmp_path, capsys):
    _write_png(tmp_path / "cat" / "a.png", (6, 4), "RGB", 100)
    _write_png(tmp_path / "cat" / "b.png", (6, 4), "RGB", 120)
    _write_png(tmp_path / "dog" / "c.PNG", (6, 4), "L", 50)
    data = load_data(str(tmp_path))
    assert data.spec.layout == "nhwc" and data.spec.dtype == "uint8" and data.x.shape == (3, 3, 4, 6)
    assert data.spec.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]
    assert "grayscale" in capsys.readouterr().err
    back = data.spec.to_user(data.x)
    assert back.shape == (3, 4, 6, 3) and back[2, 0, 0].tolist() == [50, 50, 50]


def test_a_class_folder_is_read_whole_and_what_is_not_read_is_said(tmp_path, capsys):
    """A class folder's nested folders hold its images too (as torchvision's ImageFolder reads them; they were
    dropped in silence); a sub-folder without images is said not to be a class; an .npz array that is neither the
    data nor their labels (a "label" key) is said not to be read."""
    _write_png(tmp_path / "f" / "3" / "a.png", (4, 4), "L", 10)
    _write_png(tmp_path / "f" / "3" / "deeper" / "b.png", (4, 4), "L", 20)
    _write_png(tmp_path / "f" / "3" / ".hidden" / "c.png", (4, 4), "L", 30)
    _write_png(tmp_path / "f" / "7" / "d.png", (4, 4), "L", 40)
    (tmp_path / "f" / "5").mkdir()
    data = load_data(str(tmp_path / "f"))
    assert data.spec.class_names == ["3", "7"] and data.labels.tolist() == [0, 0, 1]
    assert "sub-folder(s) 5 hold no images and are not classes" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 3), np.float32) + np.arange(3), label=np.arange(4))
    data = load_data(str(tmp_path / "d.npz"))
    assert data.labels is None
    assert "array(s) label are not read: the data are 'images', with no labels" in capsys.readouterr().err


def test_grayscale_folder_is_one_channel(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", (5, 5), "L", 40 * i)
    data = load_data(str(tmp_path))
    assert data.x.shape == (3, 1, 5, 5) and data.labels is None


def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """A camera stores a portrait photo sideways with an EXIF orientation tag; a viewer (and diffusers' load_image)
    shows it upright, and so it is read."""
    pixels = np.zeros((2, 3), np.uint8)
    pixels[0, 2] = 255  # stored: top-right corner of a 2x3 (H, W) image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "a.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "b.png")  # the same pixels, no tag: the shapes then differ
    with pytest.raises(UserError, match="size"):
        load_data(str(tmp_path))
    (tmp_path / "b.png").unlink()
    x = load_data(str(tmp_path)).x[0, 0]
    assert x.shape == (3, 2)  # upright: 3 high, 2 wide
    assert x[2, 1] == x.max() and (x == x.max()).sum() == 1  # clockwise: the top-right corner goes bottom-right


def test_a_folder_keeps_transparency_and_16_bits(tmp_path, capsys):
    """An alpha channel that is not fully opaque is kept (4 channels; an image without one gets an opaque one, said
    once with a count); a fully opaque one carries nothing and is dropped; 16-bit grayscale stays 16-bit."""
    Image.new("RGBA", (5, 5), (200, 10, 20, 128)).save(tmp_path / "a.png")
    Image.new("RGBA", (5, 5), (100, 10, 20, 255)).save(tmp_path / "b.png")
    _write_png(tmp_path / "c.png", (5, 5), "RGB", 60)
    data = load_data(str(tmp_path))
    back = data.spec.to_user(data.x)
    assert back.shape == (3, 5, 5, 4) and back[:, 0, 0].tolist() == [[200, 10, 20, 128], [100, 10, 20, 255],
                                                                      [60, 10, 20, 255]]
    assert "gave 2 image(s) without transparency an opaque alpha channel" in capsys.readouterr().err
    (tmp_path / "opaque").mkdir()
    Image.new("RGBA", (5, 5), (100, 10, 20, 255)).save(tmp_path / "opaque" / "b.png")
    assert load_data(str(tmp_path / "opaque")).x.shape == (1, 3, 5, 5)
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16)).save(tmp_path / "deep" / "d.png")
    Image.fromarray(np.full((5, 5), 1000, dtype=np.uint16)).save(tmp_path / "deep" / "e.png")
    deep = load_data(str(tmp_path / "deep"))
    back = deep.spec.to_user(deep.x)
    assert back.dtype == np.uint16 and sorted(back[:, 0, 0, 0].tolist()) == [1000, 65535]
    _write_png(tmp_path / "deep" / "f.png", (5, 5), "L", 255)
    back = load_data(str(tmp_path / "deep")).spec.to_user(load_data(str(tmp_path / "deep")).x)
    assert sorted(back[:, 0, 0, 0].tolist()) == [1000, 65535, 65535]
    assert "scaled 1 8-bit image(s) to 16 bits" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input: one-line UserErrors

@pytest.mark.parametrize("array,match", [
    (np.zeros((0, 3)), "empty"),
    (np.zeros(5), "wrong rank"),
    (np.zeros((2, 3, 4, 4, 3)), "wrong rank"),
    (np.array([[1.0, np.nan], [np.nan, 2.0]]), "2 NaN"),
    (np.array([[1.0, np.inf]]), "1 NaN or infinite"),
    (np.array([[1.0, 1e300], [2.0, 3.0]]), "values as large as 1e+300, beyond what distmatch computes in"),
    (np.float32(3.0), "a single number, not an array"),
    (np.zeros((3, 1, 5)), "too small"),
    (np.zeros((3, 5, 6, 7)), "channel axis"),
])
def test_bad_arrays(tmp_path, array, match):
    path = _save_npy(tmp_path, array, "bad.npy")
    assert "bad.npy" in _raises_one_line(match, load_data, str(path))


def test_object_and_garbled_files(tmp_path):
    path = _save_npy(tmp_path, np.array([{"a": 1}, None], dtype=object), "obj.npy")
    assert "obj.npy" in _raises_one_line("object", load_data, str(path))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    _raises_one_line("junk.npz", load_data, str(tmp_path / "junk.npz"))
    (tmp_path / "table.csv").write_text("1,2\n")
    _raises_one_line("table.csv", load_data, str(tmp_path / "table.csv"))


def test_missing_and_unknown_sources(tmp_path):
    _raises_one_line("no such file or directory", load_data, str(tmp_path / "nothere.npy"))
    message = _raises_one_line("unknown data 'foo'", load_data, "foo")
    assert "8gaussians" in message and "no such file" in message


def test_labels_of_wrong_length(tmp_path):
    path = tmp_path / "lab.npz"
    np.savez(path, x=np.ones((4, 2)), labels=np.arange(3))
    _raises_one_line("lab.npz", load_data, str(path))


def test_folder_errors(tmp_path):
    _raises_one_line("no images", load_data, str(tmp_path))
    _write_png(tmp_path / "a.png", (4, 4))
    _write_png(tmp_path / "b.png", (5, 4))
    message = _raises_one_line("a.png", load_data, str(tmp_path))
    assert "b.png" in message and "4x4" in message and "5x4" in message
    (tmp_path / "b.png").unlink()
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage bytes")
    _raises_one_line("x.png", load_data, str(tmp_path))
    (tmp_path / "x.png").unlink()
    _write_png(tmp_path / "cls" / "c.png", (4, 4))
    _raises_one_line("class sub-folders", load_data, str(tmp_path))


def test_truncated_idx(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(IDX_IMAGES_MAGIC, np.zeros((5, 4, 4)))[:-10])
    _raises_one_line("t10k-images-idx3-ubyte", load_data, str(path))
    path.write_bytes(_idx_bytes(0x00000901, np.zeros((5, 4, 4))))
    _raises_one_line("magic", load_data, str(path))


def test_spec_mismatch_and_unknown_label(tmp_path):
    spec = load_data("digits").spec
    path = _save_npy(tmp_path, np.zeros((3, 28, 28), dtype=np.uint8), "mnist.npy")
    message = _raises_one_line("has samples of shape (28, 28) but the model was trained on (8, 8)",
                               load_data, str(path), spec=spec)
    assert "mnist.npy" in message
    _raises_one_line("vectors", load_data, "moons", spec=spec)
    labelled = tmp_path / "digits.npz"
    np.savez(labelled, images=np.zeros((2, 8, 8)), labels=np.array([3, 11]))
    _raises_one_line("label 11", load_data, str(labelled), spec=spec)


def test_a_folder_of_float_images_keeps_its_values(tmp_path):
    """Float TIFFs (mode F) in [0, 1] are kept as floats (they became 8-bit zeros); floats among integer images
    are refused in one line."""
    values = np.linspace(0, 1, 25, dtype=np.float32).reshape(5, 5)
    for i in range(2):
        Image.fromarray(values * (i + 1) / 2, mode="F").save(tmp_path / f"{i}.tif")
    data = load_data(str(tmp_path))
    back = data.spec.to_user(data.x)
    assert back.dtype == np.float32 and np.allclose(back[1, :, :, 0], values, atol=1e-6)
    _write_png(tmp_path / "c.png", (5, 5), "L", 60)
    with pytest.raises(UserError, match="2 floating-point image.*among 1 integer.*keep one kind"):
        load_data(str(tmp_path))


def _each_read_as_the_other(tmp_path, capsys, a: np.ndarray, b: np.ndarray):
    """Models of images `a` and of the same images as `b`: each read against the other's spec gives the other's
    normalised images, said in a warning. Returns the two (a's, b's)."""
    models = [load_data(str(_save_npy(tmp_path, x, f"{i}.npy"))) for i, x in enumerate((a, b))]
    for model, other in ((models[0], "1.npy"), (models[1], "0.npy")):
        again = load_data(str(tmp_path / other), spec=model.spec)
        assert torch.allclose(again.x, model.x, atol=1e-6)
        assert "reading them in their own value range" in capsys.readouterr().err
    return models


def test_reference_images_of_another_number_kind_are_read_in_their_own_range(tmp_path, capsys):
    """A model trained on [0, 1] floats scored against the same images as uint8 PNG-like pixels, and the reverse:
    each kind is read in its own range, so both give the same normalised images (0..255 pixels were read as
    model units, and every score was off); 0..255 floats against a uint8 model are read as 0..255."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    floats = (pixels / 255).astype(np.float32)
    _, uint8_model = _each_read_as_the_other(tmp_path, capsys, floats, pixels)
    wide = load_data(str(_save_npy(tmp_path, pixels.astype(np.float32), "w.npy")), spec=uint8_model.spec)
    assert torch.allclose(wide.x, uint8_model.x, atol=1e-6)
    capsys.readouterr()


def test_reference_images_of_another_bit_depth_are_read_in_their_own_range(tmp_path, capsys):
    """8-bit images against a 16-bit model and the reverse were read in the model's range, to [-1, 481] or all
    near -1, in silence; each is read in its own range and said. The same images as int64 are the model's own."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 8, 8)).astype(np.uint8)
    pixels[0, 0, :2] = (0, 255)
    deep = pixels.astype(np.uint16) * 257
    uint8_model, _ = _each_read_as_the_other(tmp_path, capsys, pixels, deep)
    same = load_data(str(_save_npy(tmp_path, pixels.astype(np.int64), "i64.npy")), spec=uint8_model.spec)
    assert torch.allclose(same.x, uint8_model.x) and "warning" not in capsys.readouterr().err


def test_images_on_another_scale_than_a_declared_range_are_said(capsys):
    """0..1 floats read in a wrapped network's 0..255 lie inside it, as near-black images: said, not refused."""
    from distmatch.data import check_in_range

    check_in_range(0.0, 1.0, (0, 255), "x.npy")
    assert "span only 0 to 1 of the teacher's value_range (0, 255)" in capsys.readouterr().err
    check_in_range(3.0, 250.0, (0, 255), "x.npy")
    assert capsys.readouterr().err == ""
