"""Report figures and the self-contained HTML page."""
from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from PIL import Image

from distmatch.report import (
    curves,
    image_grid_panels,
    metric_bars,
    metrics_table,
    render_report,
    scatter_panels,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_w=100, min_h=80):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert min_w <= w <= 6000 and min_h <= h <= 6000, (w, h)
    return w, h


def _records(n=120):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        r = {"it": 10 * i, "time": 0.1 * i, "loss_g": float(np.exp(-i / 10) * 100 + 1e-3),
             "loss_critic": float(rng.normal())}
        if i % 5 == 0:
            r["loss_gan_d"] = float(rng.random())  # logged only sometimes
        recs.append(r)
    recs[3]["loss_critic"] = float("nan")  # non-finite values are skipped, not fatal
    return recs


def test_scatter_2d(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(8000, 2))
    student = rng.normal(size=(500, 2)) * 3
    student[:3] = np.nan
    out = scatter_panels([("data", data), ("teacher", data * 1.1), ("student 1-step", student)],
                         tmp_path / "sub" / "s.png", max_points=1000)
    assert out == tmp_path / "sub" / "s.png"
    w, h = _check_png(out)
    assert w > h  # three panels side by side


def test_scatter_5d_and_limits(tmp_path):
    x = np.random.default_rng(1).normal(size=(300, 5))
    _check_png(scatter_panels([("data", x), ("student", x * 0.5)], tmp_path / "p.png"))
    _check_png(scatter_panels([("data", x[:, :2])], tmp_path / "l.png", limits=((-3, 3), (-2, 2))))


def test_scatter_deterministic(tmp_path):
    x = np.random.default_rng(2).normal(size=(3000, 2))
    a = scatter_panels([("d", x)], tmp_path / "a.png", max_points=200).read_bytes()
    b = scatter_panels([("d", x)], tmp_path / "b.png", max_points=200).read_bytes()
    assert a == b


def test_scatter_rejects_mismatched_dims(tmp_path):
    with pytest.raises(ValueError):
        scatter_panels([("a", np.zeros((5, 2))), ("b", np.zeros((5, 3)))], tmp_path / "x.png")
    with pytest.raises(ValueError):
        scatter_panels([], tmp_path / "x.png")


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 8), (1, 16), (3, 16)])
def test_image_grid(tmp_path, channels, size):
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1.2, 1.2, size=(70, channels, size, size))  # slightly out of range: clipped
    few = imgs[:5]
    out = image_grid_panels([("data", imgs), ("student", few)], tmp_path / "g.png", nrow=8)
    w, h = _check_png(out)
    # 8x8 images are upscaled to >= 48 px, so an 8-wide grid is at least 8 * 48 px wide
    assert w >= 8 * 48 and h >= 8 * 48


def test_image_grid_single_image_and_grayscale_3d(tmp_path):
    imgs = np.zeros((1, 8, 8))  # (N, H, W) is taken as grayscale
    _check_png(image_grid_panels([("one", imgs)], tmp_path / "g.png"), min_w=48, min_h=48)
    with pytest.raises(ValueError):
        image_grid_panels([("bad", np.zeros((2, 2, 8, 8)))], tmp_path / "b.png")


def test_curves(tmp_path):
    _check_png(curves(_records(), tmp_path / "c.png"))
    _check_png(curves(_records(), tmp_path / "k.png", keys=["loss_g", "missing_key"]))
    _check_png(curves([], tmp_path / "e.png"))


def test_a_curve_of_one_record_is_drawn(tmp_path):
    """A run stopped after its first log line still shows its one value (a line of one point draws nothing)."""
    from matplotlib.colors import to_rgb

    with Image.open(curves([{"it": 0, "loss_g": 0.5}], tmp_path / "one.png")) as im:
        px = np.asarray(im.convert("RGB")).astype(float) / 255
    blue = np.abs(px - np.array(to_rgb("tab:blue"))).max(axis=-1) < 0.05
    assert blue.sum() >= 10, blue.sum()


def test_metric_bars(tmp_path):
    rows = [{"name": "teacher (Heun 18)", "swd": 0.012}, {"name": "student 1-step", "swd": 0.05},
            {"name": "student 4-step"}, {"name": "bad", "swd": float("nan")}]
    _check_png(metric_bars(rows, "swd", tmp_path / "b.png"))


def test_metrics_table():
    t = metrics_table([{"name": "a", "swd": 1.0}, {"name": "b"}], ["name", "swd"])
    assert t == {"columns": ["name", "swd"], "rows": [["a", 1.0], ["b", None]]}


def test_write_report(tmp_path):
    img1 = scatter_panels([("d", np.random.default_rng(0).normal(size=(50, 2)))], tmp_path / "s.png")
    img2 = metric_bars([{"name": "x", "m": 1.0}], "m", tmp_path / "b.png")
    table = metrics_table([{"name": "teacher", "swd": 0.0123456789, "nfe": 35},
                           {"name": "student", "swd": np.float32(123456.7)}], ["name", "swd", "nfe"])
    sections = [
        {"heading": "Summary", "text": "hello <script>alert(1)</script> & bye", "table": table},
        {"heading": "Figures", "images": [img1, str(img2)]},
        {"heading": "Config", "pre": "lr: 1e-4\n<tag>"},
    ]
    out = write_report(tmp_path / "report.html", "Run <A>", sections)
    page = out.read_text(encoding="utf-8")
    assert "<title>Run &lt;A&gt;</title>" in page and "<h1>Run &lt;A&gt;</h1>" in page
    assert "0.01235" in page and "1.235e+05" in page and ">35<" in page and "–" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp; bye" in page
    assert "&lt;tag&gt;" in page
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(uris) == 2
    assert base64.b64decode(uris[0]) == img1.read_bytes()
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # no external assets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "report.html", "s.png"]  # no temp file


def test_write_report_overwrites_and_keeps_old_on_error(tmp_path):
    path = tmp_path / "r.html"
    write_report(path, "first", [{"heading": "h", "text": "one"}])
    write_report(path, "second", [{"heading": "h", "text": "two"}])
    assert "second" in path.read_text()
    with pytest.raises(ValueError):
        write_report(path, "third", [{"heading": "h", "image": "typo.png"}])
    assert "second" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_missing_image_is_visible_not_fatal(tmp_path):
    page = render_report("t", [{"heading": "h", "images": [tmp_path / "nope.png"]}])
    assert "image not found" in page


def test_headline_times_the_student_against_the_teachers_network():
    """An exact mixture teacher is cheap per evaluation; the speed-up is quoted against the network fitted to it
    (as costly per evaluation as the student), the quality against the exact teacher."""
    from distmatch.report.demo import headline

    rows = [{"name": "teacher 40-step, heun", "kind": "teacher", "steps": 40, "nfe": 79, "swd": 0.01,
             "samples_per_s": 8000.0},
            {"name": "teacher network 40-step, heun", "kind": "teacher", "steps": 40, "nfe": 79, "swd": 0.011,
             "samples_per_s": 800.0},
            {"name": "student 1-step", "kind": "student", "steps": 1, "nfe": 1, "swd": 0.02,
             "samples_per_s": 64000.0}]
    line = headline(rows, "vector")
    assert "2.00x the teacher's" in line and "80x faster than the teacher's network (79 NFE)" in line
    assert "8x faster" in headline([rows[0], rows[2]], "vector")


def test_a_report_says_what_it_scored_against_and_on_which_features():
    """A data file has no held-out split, and in-domain features are not Inception's: the report says both."""
    from distmatch.report.demo import scoring_line

    inner = [{"feature_net": "classifier", "feature_net_trained_on": "training data"}]
    line = scoring_line("my_images.npz", inner)
    assert "my_images.npz itself (a data file has no held-out split" in line
    assert "in-domain classifier trained on the training data (no Inception weights named" in line
    assert "held-out split" in scoring_line("digits", inner) and "held-out" in scoring_line("moons", [{}])
    assert "Inception features, inception-v3 (w.pt" in scoring_line("digits", [{"feature_net": "inception-v3 (w.pt)"}])


def test_previews_draw_points_in_the_datas_own_units(tmp_path, monkeypatch):
    """Vector data centred at (100, -50): a preview's points are drawn there, where the user's data are, not in
    the normalised space the networks work in (centred at 0)."""
    import distmatch.report.plots as plots
    from distmatch.teachers.train import train_teacher

    drawn = []
    monkeypatch.setattr(plots, "scatter_panels", lambda panels, path, **k: drawn.append(panels[0][1]))
    data = np.random.default_rng(0).normal(size=(256, 2)) + [100.0, -50.0]
    np.save(tmp_path / "d.npy", data)
    train_teacher(str(tmp_path / "d.npy"), tmp_path / "t", overrides=["train.iters=2", "train.batch_size=16",
                                                                     "train.progress=false", "network.width=16"])
    assert drawn and all(np.allclose(np.median(x, axis=0), [100, -50], atol=25) for x in drawn)


def test_the_demos_headline_scores_the_student_at_its_own_steps():
    """A 4-step student's report led with the student stopped after its first step (the 1-step row)."""
    from distmatch.report.demo import headline

    rows = [{"kind": "teacher", "name": "teacher 18-step, heun", "nfe": 35, "steps": 18, "fd": 1.0,
             "samples_per_s": 10.0}]
    rows += [{"kind": "student", "name": f"student {k}-step", "nfe": k, "steps": k, "fd": fd,
              "samples_per_s": 100.0 / k} for k, fd in ((1, 2.34), (2, 1.5), (4, 1.2))]
    assert "student (4 NFE): fd 1.2 = 1.20x the teacher's" in headline(rows, "image")


def test_curves_follow_a_loss_that_falls_at_once_without_lagging_behind_its_first_value():
    """A first logged loss of 76 and 0.16 after: the drawn curve is 0.16 from the third point on (the EMA drawn
    before stayed above 1 for 40 points, as though the loss still fell), and the smoothing is named."""
    from distmatch.report.plots import _running_median

    y = np.array([76.0] + [0.16] * 199)
    smooth, width = _running_median(y)
    assert width == 11 and np.allclose(smooth[2:], 0.16) and smooth.max() <= 76.0
