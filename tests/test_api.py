"""The Python API: the README's example as written, in-memory data and teachers, settings checked like --set."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import distmatch
from distmatch.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = {"train.iters": 3, "train.batch_size": 32, "network.width": 16, "network.depth": 1}


def readme_python_example(heading: str = "## Python") -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_python_example(), "README.md", "exec"), scope)
    x = scope["x"]
    assert isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 2 and np.isfinite(x).all()
    assert scope["scores"]["nfe"] == 1 and scope["scores"]["swd"] < scope["teacher_scores"]["swd"] * 20


def test_in_memory_data_round_trip_to_the_users_layout_dtype_and_range(tmp_path):
    """uint8 NHW images with labels from memory: the run keeps them (resumable), samples come back uint8 NHW,
    a class asked by its label gets that class."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    labels = np.repeat(["a", "b"], 32)
    tiny = {"train.iters": 2, "train.batch_size": 8, "network.channels": [8, 8], "train.progress": False}
    teacher = distmatch.train_teacher(images, tmp_path / "t", settings=tiny, labels=labels)
    assert (tmp_path / "t" / "data.npz").is_file()
    x, got = teacher.sample(4, steps=2, cls="b", return_labels=True)
    assert x.dtype == np.uint8 and x.shape == (4, 8, 8) and list(got) == ["b"] * 4
    with pytest.raises(UserError, match="other data"):
        distmatch.train_teacher(images[::-1].copy(), tmp_path / "t", settings=tiny, labels=labels)


def test_refusals_of_in_memory_data_name_them_so(tmp_path):
    """They named the run's own copy of the arrays (OUT/data.npz), a file the user never made."""
    teacher = distmatch.wrap_teacher(Gauss(0.0, 0.2, 64), sample_shape=(1, 8, 8), features="mid")
    with pytest.raises(UserError, match=r"^in-memory data hold images of shape \(16, 16\), read as \(1, 16, 16\)") as e:
        distmatch.distill(teacher, tmp_path / "s", data=np.zeros((8, 16, 16), np.uint8), settings={"train.iters": 1},
                          progress=False)
    assert "data.npz" not in str(e.value)


def test_settings_are_checked_like_set(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'train.iterz'"):
        distmatch.train_teacher("moons", tmp_path / "t", settings={"train.iterz": 3})
    with pytest.raises(UserError, match="train.iters' expects an integer"):
        distmatch.train_teacher("moons", tmp_path / "t", settings={"train.iters": "many"})


class Shrink(torch.nn.Module):
    """A σ-space denoiser of a user's own: x̂_0 = a x / (1 + σ²) (the exact denoiser of N(0, a-ish) data)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(2))
        self.mid = torch.nn.Linear(2, 4)

    def forward(self, x, sigma):
        h = self.mid(x)  # the "bottleneck" a GAN head may read
        return self.a * x / (1 + sigma[:, None] ** 2) + 0 * h.sum(1, keepdim=True)


def test_a_network_in_python_is_distilled_and_its_student_reloaded(tmp_path):
    teacher = distmatch.wrap_teacher(Shrink(), sample_shape=(2,), features="mid")
    assert teacher.nfe() == 79 and teacher.sample(5).shape == (5, 2)
    data = np.random.default_rng(0).normal(size=(256, 2))
    student = distmatch.distill(teacher, tmp_path / "s", data=data,
                                settings={"train.iters": 4, "train.batch_size": 16}, progress=False)
    x = student.sample(8)
    assert x.shape == (8, 2) and x.dtype == np.float64 and np.isfinite(x).all()  # as the data
    for n in (2.5, 0, "8"):
        with pytest.raises(UserError, match="whole number"):
            student.sample(n)
    with pytest.raises(UserError, match="network defined in Python.*Shrink"):
        distmatch.load(tmp_path / "s")
    again = distmatch.load(tmp_path / "s", network=Shrink())
    assert np.allclose(again.sample(8), x)
    wider = Shrink()
    wider.mid = torch.nn.Linear(2, 6)
    with pytest.raises(UserError, match=r"weights do not fit the network given \(Shrink\): .*mid.weight"):
        distmatch.load(tmp_path / "s", network=wider)
    with pytest.raises(UserError, match="wrap your Shrink first"):
        distmatch.distill(Shrink(), tmp_path / "s4", data=data)
    for bad, match in (({"value_range": (1, 0)}, "low < high"), ({"sample_steps": -3}, "sample_steps must be")):
        with pytest.raises(UserError, match=match):
            distmatch.wrap_teacher(Shrink(), sample_shape=(2,), **bad)
    with pytest.raises(UserError, match="takes a torch.nn.Module, got a function"):
        distmatch.wrap_teacher(lambda x, sigma: x, sample_shape=(2,))

    class Talkative(Shrink):
        def forward(self, x, sigma):
            return {"x0": super().forward(x, sigma)}

    with pytest.raises(UserError, match="the network returned a dict; a teacher's network returns"):
        distmatch.wrap_teacher(Talkative(), sample_shape=(2,), features="mid")
    # without data, dmd2 (GAN on real data) says what it needs; without its GAN it runs data-free
    with pytest.raises(UserError, match="give the data"):
        distmatch.distill(teacher, tmp_path / "s2", settings={"train.iters": 2}, progress=False)
    distmatch.distill(teacher, tmp_path / "s3", settings={"train.iters": 2, "dmd2.gan": False}, progress=False)
    net = Shrink()
    broken = distmatch.wrap_teacher(net, sample_shape=(2,), features="mid")
    with torch.no_grad():
        net.a[0] = float("nan")  # after the load-time check: NaN samples are refused, not handed back
    with pytest.raises(UserError, match="teacher produced 5 non-finite samples out of 5: its network returns NaN"):
        broken.sample(5)


def test_a_refused_call_leaves_the_folder_free_for_the_corrected_one(tmp_path):
    """Data of the wrong shape are refused after the run folder saved them: the corrected call must run there,
    not be told that the folder holds a run on other data."""
    teacher = distmatch.wrap_teacher(Shrink(), sample_shape=(2,), features="mid")
    rng = np.random.default_rng(0)
    quick = {"train.iters": 2, "train.batch_size": 16}
    with pytest.raises(UserError, match="shape"):
        distmatch.distill(teacher, tmp_path / "s", data=rng.normal(size=(64, 3)), settings=quick, progress=False)
    distmatch.distill(teacher, tmp_path / "s", data=rng.normal(size=(64, 2)), settings=quick, progress=False)
    with pytest.raises(UserError, match="other data"):  # once it has run, the folder keeps its data
        distmatch.distill(teacher, tmp_path / "s", data=rng.normal(size=(64, 2)), settings=quick, progress=False)


def test_misused_arguments_are_refused_in_one_line_not_by_python(tmp_path, capsys):
    """What the command line refuses in a line is refused by the Python calls too: a teacher or folder of the
    wrong kind, settings not a dict, a seed outside 0..2^32-1, guidance without classes, levels that do not fall,
    steps given twice and apart (the second was dropped); labels an unconditional teacher cannot use are said, then
    dropped."""
    teacher = distmatch.wrap_teacher(Shrink(), sample_shape=(2,), features="mid")
    data = np.random.default_rng(0).normal(size=(64, 2))
    quick = {"train.iters": 2, "train.batch_size": 16}
    (tmp_path / "file").write_text("")
    for bad, match in [((None, tmp_path / "s"), "distill takes a teacher .*, got NoneType"),
                       ((teacher, None), "out takes the run folder's path, got NoneType"),
                       ((teacher, tmp_path / "file"), "file exists and is a file; --out names a run folder"),
                       ((teacher, tmp_path / "file" / "s"), "cannot make the run folder .*file is a file")]:
        with pytest.raises(UserError, match=match):
            distmatch.distill(*bad, data=data, settings=quick, progress=False)
    with pytest.raises(UserError, match="settings takes a dict of dotted keys"):
        distmatch.distill(teacher, tmp_path / "s", data=data, settings=["train.iters=2"], progress=False)
    for key, value, match in [("dmd2.guidance", 3.0, "this teacher is unconditional: leave the guidance at 1"),
                              ("student.sigma_last", -1.0, "fall from student.sigma_top to student.sigma_last > 0"),
                              ("student.sigma_top", 0.1, "fall from student.sigma_top to student.sigma_last > 0"),
                              ("student.steps", 3, r"steps 2 \(steps=\) and student.steps=3 disagree")]:
        with pytest.raises(UserError, match=match):
            distmatch.distill(teacher, tmp_path / "s", data=data, steps=2, settings={**quick, key: value},
                              progress=False)
    student = distmatch.distill(teacher, tmp_path / "s", data=data, labels=np.arange(64) % 2, settings=quick,
                                progress=False)
    assert "labels= are not used: the teacher is unconditional" in capsys.readouterr().err
    for seed in (-1, 2 ** 32, 2 ** 70):
        with pytest.raises(UserError, match="seed must be a whole number in 0..4294967295"):
            student.sample(2, seed=seed)
    assert student.sample(2, seed=2 ** 32 - 1).shape == (2, 2)


def test_evaluate_gives_the_commands_json(tmp_path):
    import json
    import subprocess
    import sys

    teacher = distmatch.train_teacher("moons", tmp_path / "t", settings={**QUICK, "train.progress": False})
    ours = distmatch.evaluate(teacher, "moons", n=200, steps=2)
    subprocess.run([sys.executable, "-m", "distmatch.cli", "evaluate", "--model", str(tmp_path / "t"), "--data",
                    "moons", "--n", "200", "--steps", "2", "--out", str(tmp_path / "e.json")], check=True,
                   capture_output=True)
    theirs = json.loads((tmp_path / "e.json").read_text())
    assert set(ours) == set(theirs)
    assert ours["swd"] == pytest.approx(theirs["swd"]) and ours["split"] == "test" and ours["nfe"] == 3  # Heun: 2 steps, 3 NFE
    assert ours["solver"] == theirs["solver"] == "heun"
    with pytest.raises(UserError, match="Inception network scores images; this model makes vectors"):
        distmatch.evaluate(teacher, "moons", n=200, steps=2, inception=tmp_path / "e.json")
    anc = distmatch.evaluate(teacher, "moons", n=200, steps=2, solver="ancestral")
    assert anc["solver"] == "ancestral" and anc["nfe"] == 2


def test_readme_own_model_example_runs_as_written_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_python_example("## Distil your own model"), "README.md", "exec"), scope)
    x, y = scope["x"], scope["y"]
    assert x.dtype == np.uint8 and x.shape == (4, 8, 8)
    assert y.shape == (4, 8, 8, 1) and np.array_equal(np.round(y[..., 0] * 255), x)  # the same images
    assert distmatch.export(tmp_path / "runs/own/student", scope["folder"]) == scope["folder"]  # done: unchanged
    with pytest.raises(UserError, match="lives in memory only"):
        distmatch.export(scope["teacher"], tmp_path / "t")


class Gauss(torch.nn.Module):
    """The exact σ-space denoiser of N(μ, s²) data, EDM-style: x̂_0 = μ + s² (x - μ) / (s² + σ²)."""

    def __init__(self, mu: float, s: float, dim: int = 2):
        super().__init__()
        self.mu, self.s = mu, s
        self.mid = torch.nn.Linear(dim, 4)

    def forward(self, x, sigma):
        sig = sigma.reshape(-1, *[1] * (x.ndim - 1))
        return self.mu + self.s ** 2 * (x - self.mu) / (self.s ** 2 + sig ** 2) + 0 * self.mid(x.flatten(1)).sum()


def test_a_sigma_space_network_runs_on_its_own_levels(tmp_path, capsys):
    """A σ-space denoiser of data far wider than EDM's σ_data = 0.5 runs on the range it is wrapped with: its
    samples are its data (on EDM's default top, σ = 80, they were not: mean 64 for data of mean 100), a default
    top far below the data's spread is said, and a K-step student's default levels scale with sigma_data."""
    net = Gauss(100.0, 30.0)
    teacher = distmatch.wrap_teacher(net, sample_shape=(2,), sigma_data=30.0, sigma_max=4800.0, features="mid")
    x = teacher.sample(4000, seed=0)
    assert abs(x.mean() - 100) < 2 and abs(x.std() - 30) < 1.5
    assert "warning" not in capsys.readouterr().err
    distmatch.wrap_teacher(net, sample_shape=(2,), sigma_data=30.0, features="mid")
    assert "the default sigma_max = 80 is 2.67 x sigma_data" in capsys.readouterr().err
    student = distmatch.distill(teacher, tmp_path / "s", steps=2, progress=False,
                                settings={"train.iters": 1, "train.batch_size": 8, "dmd2.gan": False})
    assert student.loaded.config["sigmas"] == pytest.approx([4800.0, 0.15 * 60])  # vectors: sigma_last 0.15
    for bad, match in (({"sigma_data": 0}, "sigma_data must be"),
                       ({"sigma_min": 5.0, "sigma_max": 1.0}, "0 < sigma_min"),
                       ({"sigma_max": 10.0, "flow": True}, "σ-space denoiser's range")):
        with pytest.raises(UserError, match=match):
            distmatch.wrap_teacher(net, sample_shape=(2,), features="mid", **bad)


def test_images_are_read_in_a_wrapped_networks_declared_value_range(tmp_path):
    """value_range=(0, 255) on float images that do not reach 0 or 255: the data are read as 0..255 (not stretched
    from their own extremes, which made two pixels move every score), samples come back on that scale, and data
    outside the declared range are refused."""
    teacher = distmatch.wrap_teacher(Gauss(0.0, 0.2, 64), sample_shape=(1, 8, 8), value_range=(0, 255),
                                     features="mid")
    images = (127.5 + 25.5 * np.random.default_rng(0).standard_normal((64, 1, 8, 8))).astype(np.float32)
    student = distmatch.distill(teacher, tmp_path / "s", data=images, progress=False,
                                settings={"train.iters": 1, "train.batch_size": 8})
    assert student.spec.value_range == [0.0, 255.0]
    x = student.sample(256)
    assert abs(float(x.mean()) - 127.5) < 5
    with pytest.raises(UserError, match=r"values from 0 to 255, outside the teacher's value_range \(0, 1\)"):
        unit = distmatch.wrap_teacher(Gauss(0.0, 0.2, 64), sample_shape=(1, 8, 8), value_range=(0, 1),
                                      features="mid")
        stripes = np.full((8, 8, 8), 255, np.uint8) * (np.arange(8) % 2).astype(np.uint8)[:, None, None]
        distmatch.distill(unit, tmp_path / "u", data=stripes, progress=False,
                          settings={"train.iters": 1, "train.batch_size": 8})


class Conv(torch.nn.Module):
    """A small image denoiser as users write them: weight-normed convolutions, and an input scaled in place."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        wn = torch.nn.utils.parametrizations.weight_norm
        self.inp = wn(torch.nn.Conv2d(1, 8, 3, padding=1))
        self.mid = wn(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.out = torch.nn.Conv2d(8, 1, 3, padding=1)
        self.in_place = in_place

    def forward(self, x, sigma):
        c_in = (1 + sigma ** 2).rsqrt().reshape(-1, 1, 1, 1)
        x = x.mul_(c_in) if self.in_place else x * c_in
        h = self.mid(torch.relu(self.inp(x)))
        return self.out(torch.nn.functional.interpolate(h, scale_factor=2.0)) + x


def test_networks_as_users_write_them_are_wrapped_or_refused_in_one_line(tmp_path, capsys):
    """torch's weight-norm parametrisations are not taken for the GAN's features; a network that scales its input
    in place leaves the sampler's x alone; a torch.compile'd network is used uncompiled, and said; half-precision
    weights, a class for network= and numbers of numpy in settings or as a seed are handled in one line each."""
    torch.manual_seed(0)
    plain = Conv()
    teacher = distmatch.wrap_teacher(plain, sample_shape=(1, 8, 8))
    assert teacher.loaded.config["network"]["features"] == "mid"
    in_place = Conv(in_place=True)
    in_place.load_state_dict(plain.state_dict())
    assert np.allclose(distmatch.wrap_teacher(in_place, sample_shape=(1, 8, 8)).sample(4, steps=3),
                       teacher.sample(4, steps=3), atol=1e-6)
    images = torch.rand(32, 1, 8, 8, dtype=torch.bfloat16)
    settings = {"train.iters": np.int64(1), "train.batch_size": 8, "train.lr": np.float32(1e-4)}
    student = distmatch.distill(distmatch.wrap_teacher(torch.compile(Conv()), sample_shape=(1, 8, 8)), tmp_path / "s",
                                data=images, settings=settings, progress=False)
    assert "torch.compile's wrapper uncompiled" in capsys.readouterr().err
    assert student.sample(2, seed=np.int64(3)).dtype == np.float32  # bfloat16 data come back as float32
    old = Conv()
    old.out = torch.nn.utils.weight_norm(old.out)  # the deprecated form, whose modules cannot be deep-copied
    for call, match in ((lambda: student.sample(2, seed=1.5), "seed must be a whole number"),
                        (lambda: distmatch.load(tmp_path / "s", network=old), "cannot be copied"),
                        (lambda: distmatch.wrap_teacher(Conv().bfloat16(), sample_shape=(1, 8, 8)), "bfloat16"),
                        (lambda: distmatch.load(tmp_path / "s", network=Conv), "got the class Conv"),
                        (lambda: distmatch.distill(teacher, tmp_path / "x", data=images, settings={"train.iters": {1}}),
                         "settings 'train.iters'")):
        with pytest.raises(UserError, match=match):
            call()


def test_distill_takes_a_folder_and_the_methods_own_step_count(tmp_path):
    """A teacher given as a folder path (the docstring's first form) distils and reloads; without steps= a method
    has its own default (tdm: 4), and student.steps in settings is honoured as --set is."""
    quick = {"train.iters": 2, "train.batch_size": 16, "network.width": 16, "network.depth": 1}
    folder = distmatch.train_teacher("moons", tmp_path / "t", settings=quick, progress=False).path
    fast = {"train.iters": 1, "train.batch_size": 16}
    assert distmatch.distill(str(folder), tmp_path / "a", settings=fast, progress=False).nfe() == 1
    assert distmatch.distill(folder, tmp_path / "b", method="tdm", settings=fast, progress=False).nfe() == 4
    assert distmatch.distill(folder, tmp_path / "c", settings={**fast, "student.steps": 2}, progress=False).nfe() == 2


def test_scores_on_two_in_memory_sets_use_two_feature_networks(tmp_path, monkeypatch, quick_feature_net, capsys):
    """The in-domain network fitted to in-memory references is cached per the images themselves: a second set
    (a foreign teacher's spec carries no fingerprint) gets its own network, not the first set's."""
    monkeypatch.setenv("DISTMATCH_CACHE", str(tmp_path / "cache"))
    teacher = distmatch.wrap_teacher(Gauss(0.0, 0.2, 64), sample_shape=(1, 8, 8), features="mid")
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.5):
        images = (0.2 * rng.standard_normal((64, 1, 8, 8)) + shift).clip(-1, 1).astype(np.float32)
        distmatch.evaluate(teacher, images, n=64, progress=False)
    assert len(list((tmp_path / "cache").glob("*-train-*.safetensors"))) == 2
    assert "fitting the in-domain feature network" not in capsys.readouterr().err  # progress=False: no bar


class Seen(Gauss):
    """Gauss that records every σ it is called at."""

    def __init__(self, prediction: str = "x0"):
        super().__init__(0.0, 0.5)
        self.sigmas, self.prediction = [], prediction

    def forward(self, x, sigma):
        self.sigmas.append(sigma.detach())
        x0 = super().forward(x, sigma)
        return x0 if self.prediction == "x0" else (x - x0) / sigma.reshape(-1, 1)  # ε̂ = (x - x̂_0) / σ


def test_a_sigma_space_network_is_called_inside_its_range_only(tmp_path):
    """A σ-space denoiser is run on [sigma_min, sigma_max] only: by dmd's ODE pairs too (they ran down to EDM's
    0.002), by a K-step student whose default levels would leave the range (refused in one line, not run above
    σ_max), and by student.sigmas given above or below it; an ε-predicting one's student starts at σ <= 14.62 or at
    student.start_sigma_max, as a DDPM teacher's does (it started at σ_max, 80)."""
    data = np.random.default_rng(0).normal(scale=0.5, size=(256, 2))
    quick = {"train.iters": 1, "train.batch_size": 8, "dmd.pairs": 16}
    net = Seen()
    teacher = distmatch.wrap_teacher(net, sample_shape=(2,), sigma_min=0.05, sigma_max=20.0, features="mid",
                                     sample_steps=4)
    distmatch.distill(teacher, tmp_path / "dmd", data=data, method="dmd", settings=quick, progress=False)
    assert float(torch.cat(net.sigmas).min()) >= 0.05 * (1 - 1e-6)
    quick = {"train.iters": 1, "train.batch_size": 8}
    low = distmatch.wrap_teacher(Seen(), sample_shape=(2,), sigma_max=0.5, features="mid")
    with pytest.raises(UserError, match=r"default levels \[0.5, 0.8434, .*\] do not fall within the teacher's σ"):
        distmatch.distill(low, tmp_path / "k4", data=data, steps=4, settings=quick, progress=False)
    with pytest.raises(UserError, match="student.sigmas go up to 200, above the teacher's top level σ = 20"):
        distmatch.distill(teacher, tmp_path / "hi", data=data, settings={**quick, "student.sigmas": [200.0]},
                          progress=False)
    with pytest.raises(UserError, match="student.sigmas go down to 0.01, below the teacher's lowest level σ = 0.05"):
        distmatch.distill(teacher, tmp_path / "lo", data=data, steps=2,
                          settings={**quick, "student.sigmas": [10, 0.01]}, progress=False)
    eps = distmatch.wrap_teacher(Seen("epsilon"), sample_shape=(2,), prediction="epsilon", features="mid")
    fast = {"train.iters": 1, "train.batch_size": 8, "dmd2.gan": False}
    assert distmatch.distill(eps, tmp_path / "e", settings=fast, progress=False).loaded.config["sigmas"] == [14.62]
    assert distmatch.distill(eps, tmp_path / "e5", settings={**fast, "student.start_sigma_max": 5.0},
                             progress=False).loaded.config["sigmas"] == [5.0]
    student = distmatch.load(tmp_path / "e", network=Seen("epsilon"))
    # refusals in the caller's words, not the command line's (they read "--steps")
    for steps, said in ((3, "this student was trained for at most 1 step; 3 were asked for"),
                        (0, "steps must be >= 1, got 0")):
        with pytest.raises(UserError, match=f"^{said}$"):
            student.sample(2, steps=steps)
    with pytest.raises(UserError, match="^student.sigmas has 3 entries for a 2-step student$"):
        distmatch.distill(teacher, tmp_path / "n", data=data, steps=2, settings={**quick, "student.sigmas": [9, 1, .1]},
                          progress=False)
    with pytest.raises(UserError, match="the teacher given is a student, not a teacher"):
        distmatch.distill(student, tmp_path / "s2", settings=fast, progress=False)


class Lookup(torch.nn.Module):
    """A DDPM-style network whose time embedding is a table of `steps` entries and whose labels index `classes`."""

    def __init__(self, steps: int = 1000, classes: int = 0):
        super().__init__()
        self.time = torch.nn.Embedding(steps, 2)
        self.label = torch.nn.Embedding(max(classes, 1), 2)

    def forward(self, x, t, labels=None):
        return x * self.time(t) + (0 if labels is None else self.label(labels))


def test_arguments_a_network_cannot_use_are_refused_not_ignored(tmp_path, capsys):
    """wrap_teacher refuses in one line what it used to ignore or meet as a traceback later: a time table or a
    label table smaller than the schedule or num_classes says, arguments of another convention, a table given as
    a name, non-finite flow constants, a fractional step count, a value range for vectors; load names a network
    of another class than the student's."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler().alphas_cumprod
    wrap = distmatch.wrap_teacher
    for call, match in (
            (lambda: wrap(Lookup(50), (2,), alphas_cumprod=ac, timesteps="discrete"), "IndexError"),
            (lambda: wrap(Lookup(1000, 3), (2,), alphas_cumprod=ac, timesteps="discrete", num_classes=5),
             "with label 4: IndexError"),
            (lambda: wrap(Lookup(), (2,), alphas_cumprod="linear"), "alphas_cumprod must be a table of numbers"),
            (lambda: wrap(Seen(), (2,), flow=True, shift=float("nan")), "finite shift"),
            (lambda: wrap(Seen(), (2,), flow=True, timesteps="discrete"), "timesteps= says how a DDPM-style"),
            (lambda: wrap(Seen(), (2,), timesteps="discrete"), "timesteps= says how a DDPM-style"),
            (lambda: wrap(Lookup(), (2,), alphas_cumprod=ac, shift=3.0), "shift describe a flow-matching network"),
            (lambda: wrap(Seen(), (2,), time_scale=1.0), "time_scale describe a flow-matching network"),
            (lambda: wrap(Seen(), (2,), sample_steps=2.5), "sample_steps must be a whole number"),
            (lambda: wrap(Seen(), (2,), value_range=(0, 255)), "vectors keep their own units")):
        with pytest.raises(UserError, match=match):
            call()
    three = wrap(Lookup(1000, 3), (2,), alphas_cumprod=ac, timesteps="discrete", num_classes=3)
    assert three.sample(2).shape == (2, 2)
    teacher = wrap(Seen(), (2,), features="mid")
    assert repr(teacher) == ("<distmatch teacher (in memory): vectors of dimension 2 (float32; unlabeled), "
                             "79 network evaluations>")
    fast = {"train.iters": 1, "train.batch_size": 8, "dmd2.gan": False}
    distmatch.distill(teacher, tmp_path / "s", settings=fast, progress=False)
    capsys.readouterr()
    distmatch.load(tmp_path / "s", network=Gauss(0.0, 0.5))
    assert "distilled from a test_api.Seen; network= is a test_api.Gauss" in capsys.readouterr().err
    with pytest.raises(UserError, match="msd.gan=false"):
        labelled = wrap(Lookup(1000, 2), (2,), alphas_cumprod=ac, timesteps="discrete", num_classes=2, features=None)
        distmatch.distill(labelled, tmp_path / "m", method="msd",
                          data=np.zeros((8, 2)), labels=np.arange(8) % 2, settings={"train.iters": 1}, progress=False)


def test_a_missing_inception_file_is_said_before_the_sampling(tmp_path, monkeypatch):
    """evaluate named a missing Inception file only after sampling (minutes for a teacher of 1000 steps)."""
    teacher = distmatch.wrap_teacher(Conv(), sample_shape=(1, 8, 8))
    monkeypatch.setattr(type(teacher.loaded), "sample", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises(UserError, match="no Inception weights file at .*absent.pt"):
        distmatch.evaluate(teacher, np.zeros((16, 8, 8), np.uint8), n=16, inception=tmp_path / "absent.pt")


@pytest.mark.parametrize("solver", ["heun", "ancestral"])
def test_sampling_runs_the_network_a_chunk_at_a_time_and_draws_the_same_samples(monkeypatch, solver):
    """Many images at once would hold every layer's activations for all of them (a 32x32 UNet of 36M parameters:
    about 12 MiB each, so 2048 at once needs 24 GiB); the network sees a chunk at a time, the noise is drawn as
    before, and the samples are the same."""
    import diffusers

    import distmatch.samplers as samplers

    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                layers_per_block=1, norm_num_groups=4)
    teacher = distmatch.wrap_teacher(net, sample_shape=(1, 8, 8), solver=solver,
                                     alphas_cumprod=diffusers.DDPMScheduler().alphas_cumprod).loaded
    whole, _ = teacher.sample(10, steps=3, seed=0)
    seen = []
    net.register_forward_hook(lambda _m, inputs, _out: seen.append(len(inputs[0])))
    monkeypatch.setattr(samplers, "SAMPLING_ELEMENTS", 4 * 64)  # 4 images of 1x8x8 per call
    chunked, _ = teacher.sample(10, steps=3, seed=0)
    assert max(seen) == 4 and sum(seen) == 10 * teacher.nfe(3)
    assert (chunked - whole).abs().max() <= 1e-6 * whole.abs().max()  # the same but for rounding
    from distmatch.methods.pairs import make_pairs

    seen.clear()  # the teacher's ODE pairs (dmd, the regressions) are solved a chunk at a time too
    with torch.no_grad():
        make_pairs(teacher.denoiser, 10, (1, 8, 8), 2, "heun", 14.0, [], 0, "cpu")
    assert max(seen) == 4 and sum(seen) == 10 * 3
