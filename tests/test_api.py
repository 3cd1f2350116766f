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
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_python_example("## Distil your own model"), "README.md", "exec"), scope)
    x = scope["x"]
    assert x.dtype == np.uint8 and x.shape == (4, 8, 8)
    ran = subprocess.run([sys.executable, "-m", "distmatch.cli", "export", "--model", "runs/own/student", "--out",
                          "runs/own/pipeline"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "runs/own/pipeline/scheduler/scheduler_config.json").is_file()
