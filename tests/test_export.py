"""A diffusers folder in, a stock diffusers pipeline out: distil a tiny DDPM pipeline built here, export the
student, reload it in a process that cannot import distmatch, and get the same images from the same seed."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from distmatch.errors import UserError  # noqa: E402
from distmatch.export import export_student  # noqa: E402
from distmatch.methods import run_distill  # noqa: E402
from distmatch.models import load_model  # noqa: E402

QUIET = ["train.progress=false", "train.iters=3", "train.batch_size=8", "dmd2.gan=false"]

RELOAD = """
import sys, json
sys.modules["distmatch"] = None  # this process must do without distmatch
import numpy as np, torch
from diffusers import DiffusionPipeline
folder, k, seed, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = DiffusionPipeline.from_pretrained(folder)
images = pipe(batch_size=n, num_inference_steps=k, generator=torch.manual_seed(seed), output_type="pt").images
np.save(out, images.numpy())
print(type(pipe).__name__, type(pipe.scheduler).__name__, pipe.scheduler.timesteps.tolist())
"""


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("teacher") / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("k", [1, 2, 4])
def test_exported_student_gives_the_same_images_in_stock_diffusers(ddpm_folder, tmp_path, k):
    student = run_distill(ddpm_folder, tmp_path / "s", steps=k, overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    record = json.loads((out / "model_index.json").read_text())["_distmatch"]
    assert record["steps"] == k and record["timesteps"] == [(i + 1) * (1000 // k) - 1 for i in reversed(range(k))]
    ours, _ = load_model(student).sample(3, seed=7)
    ran = subprocess.run([sys.executable, "-c", RELOAD, str(out), str(k), "7", "3", str(tmp_path / "x.npy")],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split()[:2] == ["DDPMPipeline", "LCMScheduler"]
    theirs = np.load(tmp_path / "x.npy")
    ours = ((ours / 2 + 0.5).clamp(0, 1)).numpy()
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
    assert ours.std() > 0.05  # real images, not a constant


def test_a_teacher_folder_samples_and_refuses_what_it_cannot_read(ddpm_folder, tmp_path):
    teacher = load_model(ddpm_folder)
    assert teacher.kind == "teacher" and teacher.spec.shape == (1, 8, 8) and teacher.nfe() == 35
    x, _ = teacher.sample(2, steps=3)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(UserError, match="neither a distmatch teacher"):
        run_distill(tmp_path, tmp_path / "s", overrides=QUIET)
    v = tmp_path / "v"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.ScoreSdeVeScheduler()
    pipe.save_pretrained(v)
    with pytest.raises(UserError, match="no alphas_cumprod"):
        run_distill(v, tmp_path / "s", overrides=QUIET)
    bad = tmp_path / "data.npy"
    np.save(bad, np.zeros((16, 10, 10), dtype=np.uint8) + np.arange(10, dtype=np.uint8))
    with pytest.raises(UserError, match="shape .* but the teacher makes"):
        run_distill(ddpm_folder, tmp_path / "s2", overrides=QUIET[:3], data_source=str(bad))


def test_export_refuses_what_stock_diffusers_cannot_run(ddpm_folder, tmp_path):
    student = run_distill(ddpm_folder, tmp_path / "s", steps=2, overrides=QUIET + ["student.sigmas=[150.0,1.0]"])
    with pytest.raises(UserError, match="trained at timesteps"):
        export_student(student, tmp_path / "e")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_flow_teachers_student_exports_with_the_flow_scheduler(ddpm_folder, tmp_path, k):
    flow = tmp_path / "flow"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.save_pretrained(flow)
    student = run_distill(flow, tmp_path / "s", steps=k, overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    ours, _ = load_model(student).sample(3, seed=5)
    ran = subprocess.run([sys.executable, "-c", RELOAD, str(out), str(k), "5", "3", str(tmp_path / "x.npy")],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split()[:2] == ["DDPMPipeline", "FlowMatchEulerDiscreteScheduler"]
    theirs = np.load(tmp_path / "x.npy")
    ours = ((ours / 2 + 0.5).clamp(0, 1)).numpy()
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()


RELOAD_OWN = """
import sys
sys.modules["distmatch"] = None  # this process must do without distmatch
import numpy as np, torch
from diffusers import DiffusionPipeline
folder, k, seed, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    DiffusionPipeline.from_pretrained(folder)
    print("loaded without trust_remote_code")
except ValueError as e:
    assert "trust_remote_code" in str(e), e
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
images = pipe(batch_size=n, num_inference_steps=k, generator=torch.manual_seed(seed), output_type="pt").images
np.save(out, images.numpy())
print(type(pipe).__name__)
"""


@pytest.mark.parametrize("labelled", [False, True], ids=["unconditional", "classes"])
def test_a_student_of_distmatchs_own_unet_exports_with_its_code(tmp_path, labelled):
    from distmatch.teachers.train import train_teacher

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, **({"labels": np.arange(48) % 3} if labelled else {}))
    tiny = ["train.progress=false", "train.batch_size=8", "train.iters=2"]
    teacher = train_teacher(str(tmp_path / "d.npz"), tmp_path / "t", overrides=tiny + ["network.channels=[8,8]"])
    student = run_distill(teacher, tmp_path / "s", steps=2, overrides=tiny)
    out = export_student(student, tmp_path / "export")
    assert (out / "pipeline.py").is_file() and "trust_remote_code=True" in (out / "README.md").read_text()
    ours, _ = load_model(student).sample(3, seed=4)
    ran = subprocess.run([sys.executable, "-c", RELOAD_OWN, str(out), "2", "4", "3", str(tmp_path / "x.npy")],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "loaded without" not in ran.stdout and "DistmatchStudentPipeline" in ran.stdout
    theirs = np.load(tmp_path / "x.npy")
    ours = ((ours / 2 + 0.5).clamp(0, 1)).numpy()
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
