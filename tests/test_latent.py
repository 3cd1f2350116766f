"""Latent diffusion models (a vae/ or vqvae/ beside the network): distilled on their latents, with the data encoded
and the samples decoded by their own autoencoder, exported with it; tiny models built here."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from distmatch import api  # noqa: E402
from distmatch.errors import UserError  # noqa: E402
from distmatch.to_diffusers import export_student  # noqa: E402
from distmatch.methods import run_distill  # noqa: E402
from distmatch.models import load_model  # noqa: E402
from distmatch.samplers import ode_sample  # noqa: E402

from test_export import QUIET, same_images  # noqa: E402

RELOAD = """
import sys
sys.modules["distmatch"] = None  # this process must do without distmatch
import numpy as np, torch
from diffusers import DiffusionPipeline
folder, k, seed, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
images = pipe(batch_size=n, num_inference_steps=k, generator=torch.manual_seed(seed), output_type="pt").images
np.save(out, images.numpy())
print(type(pipe).__name__, type(pipe.scheduler).__name__, type(pipe.vae).__name__)
"""

BLOCKS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), norm_num_groups=4,
              layers_per_block=1, sample_size=16)


def kl_vae(shift=None):
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.5, shift_factor=shift, **BLOCKS).eval()


def vq_vae():
    torch.manual_seed(1)
    return diffusers.VQModel(latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, scaling_factor=0.7,
                             **BLOCKS).eval()


def latent_unet(channels):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)


def latent_folder(path, kind):
    """A latent model folder as its pipeline saves it: an LDMPipeline (VQModel), a UNet with an AutoencoderKL
    (shifted, as SD3's is) in unet/ vae/ scheduler/, or a class-conditional DiTPipeline."""
    if kind == "vq":
        diffusers.LDMPipeline(vqvae=vq_vae(), unet=latent_unet(3), scheduler=diffusers.DDIMScheduler()
                              ).save_pretrained(path)
    elif kind == "kl":
        latent_unet(4).save_pretrained(path / "unet")
        kl_vae(shift=0.1).save_pretrained(path / "vae")
        diffusers.DDPMScheduler().save_pretrained(path / "scheduler")
    else:
        torch.manual_seed(0)
        dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                              out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                              num_embeds_ada_norm=3, norm_num_groups=4)
        diffusers.DiTPipeline(transformer=dit, vae=kl_vae(), scheduler=diffusers.DDIMScheduler()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    return {kind: latent_folder(root / kind, kind) for kind in ("vq", "kl", "dit")}


def images(n=24, size=16, seed=0):
    return (np.random.RandomState(seed).rand(n, size, size, 3) * 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_a_latent_teacher_samples_its_latents_and_returns_them_decoded(folders, kind):
    """The teacher's Heun runs on latents of the network's shape; what comes back is the autoencoder's decoding
    D(z / scale + shift), clamped to [-1, 1] as the pipelines clamp it."""
    teacher = load_model(folders[kind])
    vae = (vq_vae() if kind == "vq" else kl_vae(shift=0.1))
    scale, shift = vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0
    latent = (3 if kind == "vq" else 4, 8, 8)
    assert teacher.shape == latent and tuple(teacher.spec.shape) == (3, 16, 16)
    x, _ = teacher.sample(2, steps=3, seed=5)
    z = torch.randn((2, *latent), generator=torch.Generator().manual_seed(5))
    s, limit = teacher.schedule, teacher.config.get("x0_limit")  # DDIM clips x̂_0 by default
    with torch.no_grad():
        z = ode_sample(teacher.denoiser, z, 3, "heun", None, s.sigma_min, s.sigma_max, limit)
        want = vae.decode(z / scale + shift).sample.clamp(-1, 1)
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, want, atol=1e-5)


def test_the_low_start_recipes_start_a_latent_1_step_student_twice_as_high(folders, tmp_path):
    """Latents have std 1 where pixels have 0.5: `--recipe dmd2+low-start` starts a latent model's 1-step student
    at σ <= 3.4, not the pixels' 1.7; so does dmd2+low-start+ode."""
    from distmatch.methods import defaults_for

    student = load_model(run_distill(folders["kl"], tmp_path / "s", steps=1, overrides=QUIET, recipe="dmd2+low-start"))
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["recipe"] == "dmd2+low-start" and run["config"]["student"]["start_sigma_max"] == 3.4
    assert 3.2 < student.config["sigmas"][0] <= 3.4
    for recipe in ("dmd2+low-start", "dmd2+low-start+ode"):
        assert defaults_for("dmd2", "image", 1, recipe)["student"]["start_sigma_max"] == 1.7
        assert defaults_for("dmd2", "image", 1, recipe, latent=True)["student"]["start_sigma_max"] == 3.4
    assert defaults_for("dmd2", "image", 1, "dmd2+low-start+ode", latent=True)["dmd2"]["ode_weight"] == 0.25


def test_a_latent_teacher_distils_in_two_cpu_processes(folders, tmp_path):
    """The data are encoded before the run's accelerator exists: the state made for that must be the one
    make_accelerator makes (on CPUs), or a launch of two processes fails."""
    np.save(tmp_path / "x.npy", images(8))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29571",
           "-m", "distmatch", "distill", "--teacher", str(folders["kl"]), "--data", str(tmp_path / "x.npy"),
           "--steps", "1", "--out", str(tmp_path / "s"), "--set", *QUIET[:3]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-1500:]
    assert json.loads((tmp_path / "s" / "run.json").read_text())["processes"] == 2


def test_a_latent_students_data_are_encoded_and_it_keeps_its_autoencoder(folders, tmp_path):
    """The GAN's real data are the images' latents, (mean of E(x) - shift) · scale; the student's folder holds the
    autoencoder, so it samples images with its teacher's folder gone; data of the latents' shape are refused."""
    from distmatch.methods import distill_data, encoded

    teacher_dir = tmp_path / "kl"
    shutil.copytree(folders["kl"], teacher_dir)
    teacher = load_model(teacher_dir)
    np.save(tmp_path / "x.npy", images())
    data = distill_data(teacher, str(tmp_path / "x.npy"), True, "dmd2")
    z = encoded(teacher, data, False).x
    vae = kl_vae(shift=0.1)
    with torch.no_grad():
        want = (vae.encode(data.x).latent_dist.mean - 0.1) * 0.5
    assert z.shape == (24, 4, 8, 8) and torch.allclose(z, want, atol=1e-5)
    student = run_distill(teacher_dir, tmp_path / "s", steps=2, data_source=str(tmp_path / "x.npy"),
                          overrides=QUIET[:3])
    shutil.rmtree(teacher_dir)
    model = load_model(student)
    x, _ = model.sample(3, seed=1)
    assert x.shape == (3, 3, 16, 16) and x.abs().max() <= 1 and x.std() > 0.01
    with torch.no_grad():
        assert torch.allclose(model.codec.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    np.save(tmp_path / "small.npy", images(size=8))
    latent_folder(teacher_dir, "kl")
    with pytest.raises(UserError, match=r"\(3, 8, 8\) \(channels, height, width\), but the teacher makes \(3, 16"):
        run_distill(teacher_dir, tmp_path / "s2", data_source=str(tmp_path / "small.npy"), overrides=QUIET[:3])


@pytest.mark.parametrize("kind, k", [("vq", 1), ("kl", 2), ("dit", 2)])
def test_an_exported_latent_student_decodes_the_same_images_in_stock_diffusers(folders, tmp_path, kind, k):
    """The export holds the network, the scheduler and the autoencoder (vae/) with a pipeline.py that runs the
    scheduler's steps and decodes; a process without distmatch gets distmatch sample's images from the same seed."""
    student = run_distill(folders[kind], tmp_path / "s", steps=k, overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "VQModel" if kind == "vq" else "AutoencoderKL"]
    assert index["_distmatch"]["autoencoder"] == index["vae"][1] and "`vae/`" in (out / "README.md").read_text()
    printed, diff = same_images(student, out, k, 3, tmp_path, script=RELOAD)
    assert printed.split()[0] == "DistmatchPipeline" and diff < 1e-4, (printed, diff)
    assert np.load(tmp_path / "x.npy").shape == (3, 3, 16, 16)
    again = load_model(out)  # distmatch reads the export back as the latent student
    assert again.kind == "student" and again.codec is not None
    assert torch.allclose(again.sample(2, seed=4)[0], load_model(student).sample(2, seed=4)[0], atol=1e-5)


def test_wrap_teacher_takes_a_vae_and_refuses_what_is_not_one(tmp_path):
    unet = latent_unet(4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t).sample

    teacher = api.wrap_teacher(Net(), (4, 8, 8), alphas_cumprod=diffusers.DDPMScheduler().alphas_cumprod, vae=kl_vae())
    assert teacher.sample(2).shape == (2, 3, 16, 16)  # images, not the network's latents
    student = api.distill(teacher, tmp_path / "s", steps=1, settings={"train.iters": 2, "train.batch_size": 4,
                                                                        "dmd2.gan": False}, progress=False)
    assert api.load(student.path, network=Net()).sample(2).shape == teacher.sample(2).shape
    with pytest.raises(UserError, match="vae must be a diffusers AutoencoderKL or VQModel, got a Linear"):
        api.wrap_teacher(Net(), (4, 8, 8), alphas_cumprod=diffusers.DDPMScheduler().alphas_cumprod,
                         vae=torch.nn.Linear(2, 2))


def test_a_folder_whose_autoencoder_distmatch_cannot_read_is_refused_in_one_line(folders, tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(folders["kl"], folder)
    cfg = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderTiny"}))
    with pytest.raises(UserError, match=r"its autoencoder vae/ \(AutoencoderTiny\) is not one distmatch reads; a "
                                        "latent model's must be an AutoencoderKL or a VQModel"):
        load_model(folder)


def test_samples_are_decoded_a_chunk_at_a_time_and_a_nan_latent_stays_nan(folders):
    teacher = load_model(folders["kl"])
    z = torch.randn(5, 4, 8, 8)
    z[3, 0, 0, 0] = float("nan")
    with torch.no_grad():
        x = teacher.decoded(z, chunk=2)
        want = teacher.codec.decode(torch.where(torch.isfinite(z), z, 0.0))
    assert torch.isnan(x[3]).all() and torch.isfinite(x[[0, 1, 2, 4]]).all()
    assert torch.allclose(x[[0, 1, 2, 4]], want[[0, 1, 2, 4]], atol=1e-5)
    with pytest.raises(UserError, match="1 non-finite samples out of 5"):
        teacher.check_finite(x)
