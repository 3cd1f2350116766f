"""A diffusers folder in, a stock diffusers pipeline out: distil a tiny DDPM pipeline built here, export the
student, reload it in a process that cannot import distmatch, and get the same images from the same seed."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import stock_diffusers  # noqa: E402

from distmatch.errors import UserError  # noqa: E402
from distmatch.to_diffusers import export_student  # noqa: E402
from distmatch.methods import pairs, run_distill  # noqa: E402
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


def same_images(student, out, k: int, seed: int, tmp_path, script: str = None) -> tuple[str, float]:
    """The exported folder run by stock diffusers in a process without distmatch, against distmatch sample from
    the same seed: (what the process printed, the largest difference of the [0, 1] images)."""
    ours, _ = load_model(student).sample(3, seed=seed)
    status, printed = stock_diffusers.run(script or RELOAD, out, k, seed, 3, tmp_path / "x.npy")
    assert status == 0, printed[-3000:]
    ours = ((ours / 2 + 0.5).clamp(0, 1)).numpy()
    return printed, float(np.abs(ours - np.load(tmp_path / "x.npy")).max())


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("teacher") / "ddpm"
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def test_an_export_that_another_process_placed_first_is_taken_if_it_is_the_same(ddpm_folder, tmp_path, monkeypatch):
    """Every rank of a launched script calls distmatch.export: one that finds the folder written meanwhile by
    another takes it when it holds the same student (it failed with OSError: Directory not empty), and refuses
    it in one line when it holds another."""
    from distmatch import to_diffusers

    students = [run_distill(ddpm_folder, tmp_path / name, overrides=QUIET + [f"train.iters={n}"])
                for name, n in (("a", 3), ("b", 8))]  # one generator update in 5 iterations
    real = to_diffusers.remove_stale_drafts

    def export_racing(first, then, out):
        def other_process_first(folder):  # called between the check for `out` and the draft's rename
            monkeypatch.setattr(to_diffusers, "remove_stale_drafts", real)
            export_student(first, out)
            real(folder)

        monkeypatch.setattr(to_diffusers, "remove_stale_drafts", other_process_first)
        return export_student(then, out)

    assert export_racing(students[0], students[0], tmp_path / "same") == tmp_path / "same"
    with pytest.raises(UserError, match="was written by another process meanwhile"):
        export_racing(students[1], students[0], tmp_path / "other")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no draft left behind


def test_a_folder_of_fp16_variant_weights_is_read_in_float32(ddpm_folder, tmp_path):
    """A folder holding only diffusion_pytorch_model.fp16.safetensors (save_pretrained(variant="fp16"), or a
    download of that variant) was refused with diffusers' "no file named diffusion_pytorch_model.bin"."""
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder).to(torch.float16)
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    pipe.save_pretrained(tmp_path / "plain")
    assert not list((tmp_path / "variant" / "unet").glob("diffusion_pytorch_model.safetensors"))
    variant, plain = (load_model(tmp_path / name).denoiser.state_dict() for name in ("variant", "plain"))
    assert all(v.dtype == torch.float32 and torch.equal(v, plain[k]) for k, v in variant.items())
    full = load_model(ddpm_folder).denoiser.state_dict()["net.conv_in.weight"]
    assert not torch.equal(variant["net.conv_in.weight"], full)  # the fp16 weights were read, not others


@pytest.mark.parametrize("cap, top, low", [
    ([], 726, 400), (["student.start_sigma_max=0"], 999, 727),
    (["student.start_sigma_max=1.7", "student.levels_sigma_max=14.62"], 726, 400)])
def test_a_student_is_scored_only_at_levels_up_to_its_start(ddpm_folder, tmp_path, monkeypatch, cap, top, low):
    """DM, critic and GAN levels are drawn from the teacher's levels up to the student's first one: all of them for
    a student started at the top (DMD2 as published), none above t = 726 for one started there; up to
    student.levels_sigma_max where that is given (a student started at t = 363, scored up to t = 726)."""
    from distmatch.methods.common import DistributionMatching

    drawn, levels = [], DistributionMatching.levels
    monkeypatch.setattr(DistributionMatching, "levels", lambda self, *a: drawn.append(levels(self, *a)) or drawn[-1])
    run_distill(ddpm_folder, tmp_path / "s", steps=1, overrides=QUIET + cap)
    sigma = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.pow(-1).sub(1).sqrt().tolist()
    top_drawn = float(torch.cat([s for _, s in drawn]).max())  # the highest of about 30 uniform draws
    lowest = sigma[low]
    assert lowest < top_drawn <= sigma[top] * (1 + 1e-5), (top_drawn, sigma[top])


def test_a_dmd2_image_student_is_saved_as_an_ema_unless_told_otherwise(ddpm_folder, tmp_path):
    """DMD2's code keeps no EMA of its student; dmd2's image defaults keep one (0.99) at 1 and K steps, as at the
    image rate a 1-step student's last weights jump; `train.ema=0` saves the generator as last trained."""
    from safetensors.torch import load_file

    for name, steps, extra in (("raw", 1, ["train.ema=0"]), ("ema", 1, []), ("ema-k2", 2, [])):
        run_distill(ddpm_folder, tmp_path / name, steps=steps, overrides=QUIET + ["dmd2.critic_ratio=1", *extra])
        saved = load_file(tmp_path / name / "model.safetensors")
        trained = load_file(tmp_path / name / "checkpoint.safetensors")
        same = [torch.equal(v, trained["module/gen/" + k.removeprefix("gen.")]) for k, v in saved.items()]
        assert all(same) if name == "raw" else not all(same), name


@pytest.mark.parametrize("k,top", [(1, 726), (2, 726), (4, 726), (1, 999)])
def test_exported_student_gives_the_same_images_in_stock_diffusers(ddpm_folder, tmp_path, k, top):
    """The linear-β teacher's students start at t = 726 by default (student.start_sigma_max), at 999 without the
    cap: either way the export's scheduler runs exactly the trained timesteps."""
    cap = [] if top == 726 else ["student.start_sigma_max=0"]
    student = run_distill(ddpm_folder, tmp_path / "s", steps=k, overrides=QUIET + cap)
    out = export_student(student, tmp_path / "export")
    record = json.loads((out / "model_index.json").read_text())["_distmatch"]
    c = (top + 1) // k
    assert record["steps"] == k and record["timesteps"] == [(i + 1) * c - 1 for i in reversed(range(k))]
    printed, diff = same_images(student, out, k, 7, tmp_path)
    assert printed.split()[:2] == ["DDPMPipeline", "LCMScheduler"] and diff < 1e-4, (printed, diff)
    assert np.load(tmp_path / "x.npy").std() > 0.05  # real images, not a constant
    # distmatch reads its export back as the student (its K levels), not as a teacher sampled by Heun
    again = load_model(out)
    assert again.kind == "student" and again.nfe() == k
    assert torch.allclose(again.sample(3, seed=5)[0], load_model(student).sample(3, seed=5)[0], atol=1e-5)
    with pytest.raises(UserError, match="a student that distmatch exported, not a teacher"):
        run_distill(out, tmp_path / "s2", overrides=QUIET)


def test_a_student_of_a_unet_that_learns_its_variance_exports_its_prediction_only(ddpm_folder, tmp_path):
    """A teacher with 2C output channels (ε and a learned variance): the exported UNet keeps the C channels the
    student was trained on, which LCMScheduler can step, and gives the same images."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = tmp_path / "learned"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(variance_type="learned_range")
                           ).save_pretrained(folder)
    student = run_distill(folder, tmp_path / "s", steps=2, overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    assert json.loads((out / "unet" / "config.json").read_text())["out_channels"] == 1
    printed, diff = same_images(student, out, 2, 3, tmp_path)
    assert printed.split()[:2] == ["DDPMPipeline", "LCMScheduler"] and diff < 1e-4, (printed, diff)


@pytest.mark.parametrize("k", [1, 2])
def test_a_zero_terminal_snr_v_teachers_student_exports_and_gives_the_same_images(ddpm_folder, tmp_path, k):
    """A v-prediction teacher with ᾱ_999 = 0 (rescale_betas_zero_snr): its student starts at the finite top level
    that stands for σ = ∞, and the export's scheduler runs it exactly."""
    folder = tmp_path / "zsnr"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    pipe.save_pretrained(folder)
    student = run_distill(folder, tmp_path / "s", steps=k, overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    assert json.loads((out / "model_index.json").read_text())["_distmatch"]["timesteps"][0] == 999
    printed, diff = same_images(student, out, k, 4, tmp_path)
    assert printed.split()[:2] == ["DDPMPipeline", "LCMScheduler"] and diff < 1e-4, (printed, diff)


@pytest.mark.parametrize("recipe, ode_weight", [("dmd2+low-start", 0.0), ("dmd2+low-start+ode", 0.25)])
def test_the_low_start_recipes_start_an_epsilon_teachers_1_step_student_at_sigma_1_7(ddpm_folder, tmp_path, recipe,
                                                                                      ode_weight):
    """`--recipe dmd2+low-start` is dmd2 with a 1-step student of an ε teacher started at σ <= 1.7 (t = 363 on a
    linear-β schedule), `dmd2+low-start+ode` the same plus the regression on 1024 ODE pairs made from that start;
    both are refused, with a line, for K-step students and for teachers that do not predict ε."""
    pairs = ["dmd2.ode_pairs=8"] if ode_weight else []  # the recipe's 1024 pairs, cut down for the test
    student = load_model(run_distill(ddpm_folder, tmp_path / "s", steps=1, overrides=QUIET + pairs, recipe=recipe))
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["method"] == "dmd2" and run["config"]["student"]["start_sigma_max"] == 1.7
    assert run["config"]["dmd2"]["ode_weight"] == ode_weight
    assert 1.6 < student.config["sigmas"][0] <= 1.7
    assert (tmp_path / "s" / "dmd_pairs.safetensors").exists() == bool(ode_weight)
    with pytest.raises(UserError, match="defined for 1-step students on image data of ε-predicting teachers only"):
        run_distill(ddpm_folder, tmp_path / "k2", steps=2, overrides=QUIET, recipe=recipe)
    v = tmp_path / "v"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.DDPMScheduler(prediction_type="v_prediction")
    pipe.save_pretrained(v)
    with pytest.raises(UserError, match="this teacher predicts v_prediction: use --method dmd2"):
        run_distill(v, tmp_path / "v-s", steps=1, overrides=QUIET, recipe=recipe)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    pipe.save_pretrained(tmp_path / "flow")
    with pytest.raises(UserError, match=r"this teacher predicts the velocity \(flow matching\)"):
        run_distill(tmp_path / "flow", tmp_path / "f-s", steps=1, overrides=QUIET, recipe=recipe)


def test_a_run_resumes_from_its_teacher_moved_and_keeps_out_of_a_folder_of_other_files(ddpm_folder, tmp_path,
                                                                                          capsys, monkeypatch):
    """The teacher's folder may move between a run's start and its resumption (its weights are what is compared);
    another teacher is still refused. --out holding a user's files (data, an export) is refused, not mixed into."""
    shutil.copytree(ddpm_folder, tmp_path / "moved")
    run_distill(ddpm_folder, tmp_path / "s", steps=1, overrides=QUIET)
    run_distill(tmp_path / "moved", tmp_path / "s", steps=1, overrides=QUIET[:1] + ["train.iters=4"] + QUIET[2:])
    assert "the teacher is read from" in capsys.readouterr().err
    assert json.loads((tmp_path / "s" / "run.json").read_text())["teacher"] == str((tmp_path / "moved").resolve())
    other = diffusers.DDPMPipeline.from_pretrained(tmp_path / "moved")
    with torch.no_grad():
        next(other.unet.parameters()).mul_(2)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="different settings .teacher: .*teacher_weights"):
        run_distill(tmp_path / "other", tmp_path / "s", steps=1, overrides=QUIET[:1] + ["train.iters=5"] + QUIET[2:])
    from distmatch import methods  # a run begun when the fingerprint held the folder's path resumes too

    monkeypatch.setattr(methods, "teacher_fingerprint", lambda t, with_folder=False: pairs.teacher_fingerprint(t, True))
    run_distill(ddpm_folder, tmp_path / "old", steps=1, overrides=QUIET)
    monkeypatch.undo()
    run_distill(ddpm_folder, tmp_path / "old", steps=1, overrides=QUIET[:1] + ["train.iters=4"] + QUIET[2:])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "0.png").write_bytes(b"")
    with pytest.raises(UserError, match="mine exists and holds other files .0.png.; use a new or empty folder"):
        run_distill(ddpm_folder, tmp_path / "mine", steps=1, overrides=QUIET)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["0.png"]


def test_sigma_space_levels_are_refused_for_a_ddpm_teachers_k_step_student(ddpm_folder, tmp_path):
    """student.sigma_top / sigma_last place the levels of a σ-space teacher's student; a DDPM teacher's student
    runs its scheduler's timesteps, so they would be ignored: refused, with what to set instead."""
    for key in ("student.sigma_top=5", "student.sigma_last=0.2"):
        with pytest.raises(UserError, match=f"{key.split('=')[0]} places a K-step student's levels on a σ-space "
                                            "teacher.*student.timesteps"):
            run_distill(ddpm_folder, tmp_path / "s", steps=2, overrides=QUIET + [key])
    run_distill(ddpm_folder, tmp_path / "s", steps=2, overrides=QUIET + ["student.timesteps=[700,300]"])


def test_labels_an_unconditional_teacher_cannot_use_are_said(ddpm_folder, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "lab.npz", images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 3)
    run_distill(ddpm_folder, tmp_path / "s", steps=1, data_source=str(tmp_path / "lab.npz"),
                overrides=QUIET[:3] + ["dmd2.gan=true"])
    assert "lab.npz' carry class labels, which an unconditional teacher does not use" in capsys.readouterr().err


def test_a_teacher_folder_samples_and_refuses_what_it_cannot_read(ddpm_folder, tmp_path):
    teacher = load_model(ddpm_folder)
    assert teacher.kind == "teacher" and teacher.spec.shape == (1, 8, 8) and teacher.nfe() == 35
    x, _ = teacher.sample(2, steps=3)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(UserError, match="neither a distmatch teacher"):
        run_distill(tmp_path, tmp_path / "s", overrides=QUIET)
    v = tmp_path / "v"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.CMStochasticIterativeScheduler()  # consistency models' σ-space: not a teacher's
    pipe.save_pretrained(v)
    with pytest.raises(UserError, match="no alphas_cumprod"):
        run_distill(v, tmp_path / "s", overrides=QUIET)
    latent = tmp_path / "ldm"
    pipe.save_pretrained(latent)
    index = json.loads((latent / "model_index.json").read_text())
    (latent / "model_index.json").write_text(json.dumps({**index, "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(UserError, match="names a vqvae .VQModel. but there is no vqvae/ folder"):
        run_distill(latent, tmp_path / "s", overrides=QUIET)
    bad = tmp_path / "data.npy"
    np.save(bad, np.zeros((16, 10, 10), dtype=np.uint8) + np.arange(10, dtype=np.uint8))
    with pytest.raises(UserError, match="shape .* but the teacher makes"):
        run_distill(ddpm_folder, tmp_path / "s2", overrides=QUIET[:3], data_source=str(bad))
    with pytest.raises(UserError, match="'moons' are vectors of dimension 2, but the teacher makes images"):
        run_distill(ddpm_folder, tmp_path / "s2", overrides=QUIET[:3], data_source="moons")


@pytest.mark.parametrize("file,text,match", [
    ("model_index.json", '{"unet": ["diffusers",', "model_index.json cannot be read as JSON"),
    ("model_index.json", "[1, 2]", "must hold a JSON object, not a list"),
    ("scheduler/scheduler_config.json", "{not json", "scheduler/scheduler_config.json cannot be read as JSON"),
    ("unet/config.json", '{"sample_size": 8}', "unet/config.json names no class"),
    ("unet", None, r"names a unet \(UNet2DModel\) but there is no unet/ folder")])
def test_a_folder_with_a_broken_config_file_is_refused_in_one_line(ddpm_folder, tmp_path, file, text, match):
    import shutil

    folder = tmp_path / "t"
    shutil.copytree(ddpm_folder, folder)
    if text is None:
        shutil.rmtree(folder / file)
    elif file != "model_index.json":  # the sub-folders alone: their own config files name the classes
        (folder / "model_index.json").unlink()
    if text is not None:
        (folder / file).write_text(text)
    with pytest.raises(UserError, match=match):
        load_model(folder)


def test_a_teacher_folder_is_scored_on_data_in_their_own_range_and_on_its_students_network(ddpm_folder, tmp_path):
    """A diffusers teacher knows no data: scored against data in another value range (digits, 0..16) it sees them
    mapped to its [-1, 1] exactly as its students were trained on them, and the in-domain classifier is trained on
    the same data's training split, as for its students (not an autoencoder on the 360 test images)."""
    import distmatch
    from distmatch.data import load_data

    teacher = load_model(ddpm_folder)
    reference = load_data("digits", split="test", spec=teacher.spec)
    student = load_model(run_distill(ddpm_folder, tmp_path / "s", overrides=QUIET, data_source="digits"))
    assert torch.equal(reference.x, load_data("digits", split="test", spec=student.spec).x)
    assert float(reference.x.min()) == -1 and float(reference.x.max()) == 1
    scores = [distmatch.evaluate(ddpm_folder, "digits", n=40, steps=2, solver="euler"),
              distmatch.evaluate(tmp_path / "s", "digits", n=40)]
    assert [(r["feature_net"], r["feature_net_trained_on"]) for r in scores] == [("classifier", "training data")] * 2


def test_export_refuses_what_stock_diffusers_cannot_run(ddpm_folder, tmp_path, capsys):
    """A last level at t = 0, where LCM's boundary condition returns its input whatever the network says; levels
    between the teacher's timesteps, which a scheduler of whole timesteps would round (the distillation says so
    before it trains)."""
    student = run_distill(ddpm_folder, tmp_path / "s", steps=2, overrides=QUIET + ["student.timesteps=[700,0]"])
    with pytest.raises(UserError, match="returns its input unchanged at timestep 0"):
        export_student(student, tmp_path / "e")
    capsys.readouterr()
    student = run_distill(ddpm_folder, tmp_path / "s2", steps=2, overrides=QUIET + ["student.sigmas=[5.0,0.5]"])
    assert "student.sigmas [5.0, 0.5] lie between the teacher's training timesteps" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"σ = \[5.0, 0.5\] lie between the teacher's training timesteps"):
        export_student(student, tmp_path / "e")


def test_a_flow_network_fed_another_time_scale_is_not_exported(ddpm_folder, tmp_path):
    """diffusers' flow schedulers feed t = num_train_timesteps · s: a UNet wrapped to take t = s (time_scale=1) was
    exported with such a scheduler, which fed it 1000x its times; refused in one line."""
    import distmatch

    unet = diffusers.UNet2DModel.from_pretrained(ddpm_folder / "unet")
    teacher = distmatch.wrap_teacher(unet, sample_shape=(1, 8, 8), flow=True, time_scale=1.0)
    images = np.random.default_rng(0).integers(0, 256, size=(32, 8, 8), dtype=np.uint8)
    distmatch.distill(teacher, tmp_path / "s", data=images, steps=2,
                      settings={"train.iters": 1, "train.batch_size": 8, "dmd2.gan": False}, progress=False)
    with pytest.raises(UserError, match=r"feed its network t = 1 s, where diffusers' flow schedulers feed t = "):
        export_student(tmp_path / "s", tmp_path / "e")


@pytest.mark.parametrize("kind, start, refusal", [
    ("score", 14.62, "no stock diffusers scheduler runs a score"),
    ("edm", 40.0, "no stock diffusers pipeline runs an EDM-preconditioned UNet")])
def test_a_sigma_space_folders_student_starts_where_its_x0_allows_and_is_not_exported(tmp_path, kind, start, refusal):
    """A VE score network's x̂_0 = x + σ² s carries its error times σ, as an ε network's does: its 1-step student
    starts at σ <= start_sigma_max (14.62), not at the top of its range (σ' = 50 on [0, 1], 100 here). A UNet with
    EDM's preconditioning (EDMEulerScheduler) has no such error: its student starts at the top, σ 40 here. Both
    train and sample; export, which has no stock scheduler or pipeline for them, refuses in one line."""
    from test_adapters import edm_folder, score_sde_folder

    folder = score_sde_folder(tmp_path / "ve") if kind == "score" else edm_folder(tmp_path / "edm", sigma_max=40.0)
    student = run_distill(folder, tmp_path / "s", steps=1, overrides=QUIET)
    model = load_model(student)
    assert model.config["sigmas"] == [pytest.approx(start)]
    x, _ = model.sample(4, seed=0)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(UserError, match=refusal):
        export_student(student, tmp_path / "e")


def test_a_short_schedules_export_uses_the_students_output_alone(tmp_path):
    """A 4-timestep teacher's 1-step student runs at t = 3, where LCM's default timestep_scaling (10) would mix
    0.03 % of the noisy input into its output: the exported scheduler's c_skip is nil there."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=4)).save_pretrained(
        tmp_path / "t")
    student = run_distill(tmp_path / "t", tmp_path / "s", steps=1, overrides=QUIET)
    out = export_student(student, tmp_path / "new" / "folders" / "e")  # parents made, as for any --out
    scheduler = diffusers.LCMScheduler.from_pretrained(out / "scheduler")
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [3]
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(3)
    assert c_skip < 1e-6 and abs(c_out - 1) < 1e-6
    assert "default (`num_inference_steps=1000`) included: pass `num_inference_steps=1`" in (
        out / "README.md").read_text()  # a stock DDPMPipeline would run 1000 steps if not told


@pytest.mark.parametrize("k,timesteps", [(2, "[700,60]"), (4, "[700,500,180,5]")])
def test_student_levels_given_as_the_teachers_timesteps_export_with_a_pipeline_that_passes_them(
        ddpm_folder, tmp_path, k, timesteps):
    """student.timesteps: a DDPM teacher's own timesteps for the K levels (a last step below 180 here, which no K-step
    LCM schedule holds): the export's pipeline.py gives the stock LCMScheduler those timesteps, and stock diffusers
    draws the same images as distmatch sample."""
    student = run_distill(ddpm_folder, tmp_path / "s", steps=k, overrides=QUIET + [f"student.timesteps={timesteps}"])
    trained = json.loads(timesteps)
    a = diffusers.DDPMScheduler().alphas_cumprod.double()
    want = ((1 - a[trained]) / a[trained]).sqrt().tolist()
    assert json.loads((student / "run.json").read_text())["levels"] == pytest.approx(want, rel=1e-6)
    out = export_student(student, tmp_path / "export")
    assert json.loads((out / "model_index.json").read_text())["trained_timesteps"] == trained
    script = RELOAD_OWN + "print(type(pipe.scheduler).__name__, pipe.scheduler.timesteps.tolist())\n" + (
        "try:\n    pipe(num_inference_steps=k + 1)\nexcept ValueError as e:\n    print('refused:', e)\n")
    printed, diff = same_images(student, out, k, 5, tmp_path, script)
    assert f"LCMScheduler {trained}" in printed and "loaded without" not in printed, printed
    assert f"refused: this student was trained at timesteps {trained}" in printed, printed  # not untrained levels
    assert "DistmatchPipeline" in printed and diff < 1e-4, (printed, diff)


@pytest.mark.parametrize("k,terminal", [(1, 0), (2, 0), (4, 0), (2, 0.5)])
def test_a_flow_teachers_student_exports_with_the_flow_scheduler(ddpm_folder, tmp_path, k, terminal):
    flow = tmp_path / "flow"
    pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.save_pretrained(flow)
    student = run_distill(flow, tmp_path / "s", steps=k, overrides=QUIET + [f"student.flow_terminal={terminal}"])
    # the stock scheduler's levels end at its lowest training level; student.flow_terminal moves the last one to
    # s = shift(terminal), which the export's scheduler runs through its shift_terminal
    last = json.loads((student / "config.json").read_text())["sigmas"][-1]
    pipe.scheduler.set_timesteps(k)
    want = 3 * terminal / (1 + 2 * terminal) if terminal else float(pipe.scheduler.sigmas[-2])
    assert k == 1 or last / (1 + last) == pytest.approx(want, rel=1e-4)
    out = export_student(student, tmp_path / "export")
    printed, diff = same_images(student, out, k, 5, tmp_path)
    assert printed.split()[:2] == ["DDPMPipeline", "FlowMatchEulerDiscreteScheduler"] and diff < 1e-4, (printed, diff)


@pytest.mark.parametrize("flow", [False, True], ids=["ddpm", "flow"])
def test_a_tdm_student_moves_along_its_own_noise_and_exports_with_a_deterministic_scheduler(
        ddpm_folder, tmp_path, flow):
    """TDM's student moves DDIM-like between steps: its export steps with DDIM (η = 0) on exactly its trained
    timesteps, or with the flow scheduler's Euler step without stochastic sampling, and gives distmatch's images."""
    folder = ddpm_folder
    if flow:
        folder = tmp_path / "flow"
        pipe = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        pipe.save_pretrained(folder)
    student = run_distill(folder, tmp_path / "s", method="tdm", overrides=QUIET[:3] + ["tdm.move=ddim"])
    out = export_student(student, tmp_path / "export")
    record = json.loads((out / "model_index.json").read_text())["_distmatch"]
    assert record["move"] == "ddim" and record["steps"] == 4 and "DDIM-like" in (out / "README.md").read_text()
    printed, diff = same_images(student, out, 4, 6, tmp_path)
    scheduler = "FlowMatchEulerDiscreteScheduler" if flow else f"DDIMScheduler {record['timesteps']}"
    assert printed.startswith(f"DDPMPipeline {scheduler}") and diff < 1e-4, (printed, diff)
    if not flow:
        assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["timestep_spacing"] == "trailing"
    assert torch.allclose(load_model(out).sample(3, seed=2)[0], load_model(student).sample(3, seed=2)[0], atol=1e-5)


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


@pytest.mark.parametrize("labelled, method", [(False, "dmd2"), (True, "dmd2"), (False, "tdm"), (True, "msd")],
                         ids=["unconditional", "classes", "tdm", "msd"])
def test_a_student_of_distmatchs_own_unet_exports_with_its_code(tmp_path, labelled, method):
    """msd: a U-Net per student in the folder's network, each class sent to its owner."""
    from distmatch.teachers.train import train_teacher

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, **({"labels": np.arange(48) % 3} if labelled else {}))
    tiny = ["train.progress=false", "train.batch_size=8", "train.iters=2"]
    teacher = train_teacher(str(tmp_path / "d.npz"), tmp_path / "t", overrides=tiny + ["network.channels=[8,8]"])
    extra = {"tdm": ["tdm.move=ddim"], "msd": ["train.lr=1e-2", "msd.students=2"]}.get(method, [])  # msd: apart
    student = run_distill(teacher, tmp_path / "s", method=method, steps=2, overrides=tiny + extra)
    out = export_student(student, tmp_path / "export")
    assert json.loads((out / "student" / "config.json").read_text())["move"] == ("ddim" if method == "tdm" else
                                                                                 "renoise")
    assert (out / "pipeline.py").is_file() and "trust_remote_code=True" in (out / "README.md").read_text()
    conds = []
    if method == "msd":
        owner = json.loads((out / "student" / "config.json").read_text())["owner"]
        assert sorted(set(owner)) == [0, 1] and len(owner) == 3
        conds = [owner.index(0), owner.index(1)]  # a class of each student
    printed, images = exported_images(out, 2, 4, tmp_path, ["None"] + [f"[{c}] * 3" for c in conds] + ["list"])
    assert "loaded without" not in printed and "DistmatchStudentPipeline" in printed, printed
    for cond, x in zip([None] + conds, images):  # drawn labels, then each class given
        ours, _ = load_model(student).sample(3, cond=cond, seed=4)
        assert np.abs(unit(ours) - x).max() < 1e-4, cond
    for j in range(3):  # a generator per image: each image as one drawn alone from its seed
        ours, _ = load_model(student).sample(1, seed=4 + j)
        assert np.abs(unit(ours) - images[-1][j:j + 1]).max() < 1e-4, j
    with pytest.raises(UserError, match="exported with its own network code"):
        load_model(out)


RELOAD_LABELLED = RELOAD_OWN[:RELOAD_OWN.index("images = pipe(")] + """
for i, labels in enumerate(sys.argv[6:]):  # Python expressions; None: drawn as distmatch draws them
    given = {} if labels in ("None", "list", "list1") else {"class_labels": eval(labels)}
    # list: drawn, one generator per image (seed, seed + 1, ...), each image's label and noise from its own;
    # list1: a list of one generator, which is that generator
    generator = ([torch.Generator().manual_seed(seed + j) for j in range(n)] if labels == "list" else
                 [torch.Generator().manual_seed(seed)] if labels == "list1" else torch.manual_seed(seed))
    images = pipe(batch_size=n, num_inference_steps=k, generator=generator, output_type="pt", **given)
    np.save(f"{out}.{i}.npy", images.images.numpy())
print(type(pipe).__name__)
"""


def exported_images(out, k: int, seed: int, tmp_path, labels: list[str]) -> tuple[str, list[np.ndarray]]:
    """An export with its own code run by stock diffusers in one process without distmatch, 3 images from `seed`
    for each `labels` expression: (what the process printed, the [0, 1] images of each)."""
    status, printed = stock_diffusers.run(RELOAD_LABELLED, out, k, seed, 3, tmp_path / "x", *labels)
    assert status == 0, printed[-3000:]
    return printed, [np.load(tmp_path / f"x.{i}.npy") for i in range(len(labels))]


def unit(x: torch.Tensor) -> np.ndarray:
    """distmatch's [-1, 1] samples as a pipeline's [0, 1] images."""
    return (x / 2 + 0.5).clamp(0, 1).numpy()


def class_folder(tmp_path, kind: str):
    """A tiny class-conditional teacher (3 classes): a UNet2DModel DDPM, a flow one, or a DiT that learns its
    variance; and labelled data for it."""
    torch.manual_seed(0)
    if kind == "dit":
        net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                              out_channels=2, num_layers=2, sample_size=8, patch_size=2,
                                              num_embeds_ada_norm=3, norm_num_groups=1)
    else:
        net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                    down_block_types=("DownBlock2D", "DownBlock2D"), num_class_embeds=3,
                                    up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    scheduler = (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0) if kind == "flow" else
                 diffusers.DDPMScheduler(variance_type="learned_range" if kind == "dit" else "fixed_small"))
    net.save_pretrained(tmp_path / "t" / ("transformer" if kind == "dit" else "unet"))
    scheduler.save_pretrained(tmp_path / "t" / "scheduler")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (48, 8, 8), dtype=np.uint8),
             labels=rng.integers(0, 3, 48))
    return tmp_path / "t", str(tmp_path / "d.npz")


def test_guidance_needs_a_teacher_trained_without_a_class_too(tmp_path):
    """A UNet2DModel's class table holds its classes only: guidance, which runs the teacher on the "no class"
    label, is refused in one line (it was an IndexError); a DiT keeps a row for it and runs guided."""
    quick = ["train.progress=false", "train.iters=1", "train.batch_size=4", "dmd2.guidance=2"]
    teacher, data = class_folder(tmp_path / "u", "unet")
    with pytest.raises(UserError, match="not trained for classifier-free guidance"):
        run_distill(teacher, tmp_path / "s", data_source=data, overrides=quick)
    teacher, data = class_folder(tmp_path / "d", "dit")
    run_distill(teacher, tmp_path / "s", data_source=data, overrides=quick)


@pytest.mark.parametrize("kind,k,method", [("unet", 2, "dmd2"), ("flow", 2, "dmd2"), ("dit", 1, "dmd2"),
                                           ("unet", 2, "tdm")])
def test_a_class_conditional_student_exports_with_a_pipeline_that_passes_labels(tmp_path, kind, k, method):
    """The stock network and scheduler plus pipeline.py: the same images as distmatch sample from the same seed,
    with labels drawn as distmatch draws them (the teacher's classes, uniformly) or given by index or class name
    (tdm's student: through DDIMScheduler)."""
    teacher, data = class_folder(tmp_path, kind)
    student = run_distill(teacher, tmp_path / "s", method=method, steps=k, data_source=data,
                          overrides=QUIET if method == "dmd2" else QUIET[:3] + ["tdm.move=ddim"])
    out = export_student(student, tmp_path / "export")
    name = "transformer" if kind == "dit" else "unet"
    index = json.loads((out / "model_index.json").read_text())
    assert index[name][1] == type(load_model(student).denoiser.net).__name__ and (out / "pipeline.py").is_file()
    assert index["class_weights"] == pytest.approx([1 / 3] * 3) and index["class_names"] == ["0", "1", "2"]
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    printed, (drawn, *given, listed, one) = exported_images(out, k, 4, tmp_path,
                                                           ["None", "[2, 2, 2]", "'1'", "list", "list1"])
    assert "loaded without" not in printed and "DistmatchPipeline" in printed, printed
    for cond, x in zip((None, 2, 1), (drawn, *given)):  # drawn labels, by index, by class name
        ours, _ = load_model(student).sample(3, cond=cond, seed=4)
        assert np.abs(unit(ours) - x).max() < 1e-4, cond
    for j in range(3):  # a generator per image: each image as one drawn alone from its seed
        ours, _ = load_model(student).sample(1, seed=4 + j)
        assert np.abs(unit(ours) - listed[j:j + 1]).max() < 1e-4, j
    assert np.abs(one - drawn).max() < 1e-4  # a list of one generator is that generator, as randn_tensor takes it
    assert np.abs(given[1] - drawn).max() > 1e-3  # the labels reach the network


def test_a_foreign_teachers_classes_are_the_numbers_its_data_are_labelled_with(tmp_path):
    """Data holding classes 1 and 2 of a 3-class teacher train on its classes 1 and 2 (not renumbered 0 and 1);
    labels the teacher does not have are refused in one line."""
    from distmatch.methods import distill_data

    teacher, _ = class_folder(tmp_path, "unet")
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "some.npz", images=images, labels=np.array([1, 2] * 4))
    data = distill_data(load_model(teacher), str(tmp_path / "some.npz"), True, "dmd2")
    assert data.labels.tolist() == [1, 2] * 4 and data.spec.class_names == [0, 1, 2]
    student = run_distill(teacher, tmp_path / "s", data_source=str(tmp_path / "some.npz"), overrides=QUIET)
    x, labels = load_model(student).sample(6, cond=2)
    assert labels.tolist() == [2] * 6
    assert load_model(student).class_index("02") == 2  # --class as a folder named 02 was read (it was refused)
    for labels, bad in (([0, 3] * 4, "3"), (["a", "b"] * 4, "'a'")):
        np.savez(tmp_path / "bad.npz", images=images, labels=np.array(labels))
        with pytest.raises(UserError, match=f"labels {bad}.*teacher's classes are the numbers 0..2"):
            distill_data(load_model(teacher), str(tmp_path / "bad.npz"), True, "dmd2")


def test_msd_on_a_diffusers_teacher_exports_one_network_per_student_behind_the_pipelines_router(tmp_path):
    """msd's default (four students, or one per class when there are fewer) runs on a 3-class diffusers teacher.
    Its export (refused before: no stock pipeline routes classes) holds each student's network and a pipeline.py
    that sends each class to its owner: the same images as distmatch sample, drawn or given labels alike;
    distmatch does not read such a folder back, and says so. Its k-means partition groups the classes of the
    data given (the teacher carries none), and msd.small, which narrows distmatch's own networks, is refused."""
    teacher, data = class_folder(tmp_path, "unet")
    quick = ["train.progress=false", "train.iters=3", "train.batch_size=8"]
    student = run_distill(teacher, tmp_path / "s", method="msd", data_source=data, overrides=quick)
    assert json.loads((student / "config.json").read_text())["router"]["owner"] == [0, 1, 2]
    kmeans = run_distill(teacher, tmp_path / "k", method="msd", steps=2, data_source=data,
                         overrides=quick + ["msd.partition=kmeans", "msd.students=2"])
    owner = json.loads((kmeans / "config.json").read_text())["router"]["owner"]
    assert sorted(set(owner)) == [0, 1]
    out = export_student(kmeans, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["owner"] == owner and [k for k in index if k.startswith("unet")] == ["unet_0", "unet_1"]
    conds = [owner.index(0), owner.index(1)]  # a class of each student
    printed, images = exported_images(out, 2, 4, tmp_path, ["None"] + [f"[{c}] * 3" for c in conds])
    assert "DistmatchPipeline" in printed, printed
    for cond, x in zip([None] + conds, images):  # drawn labels, then each class given
        ours, _ = load_model(kmeans).sample(3, cond=cond, seed=4)
        assert np.abs(unit(ours) - x).max() < 1e-4, cond
    assert "multi-student model (msd)" in (out / "README.md").read_text()
    with pytest.raises(UserError, match="msd student exported as one network per group of classes"):
        load_model(out)
    with pytest.raises(UserError, match="msd.small narrows distmatch's own networks"):
        run_distill(teacher, tmp_path / "m", method="msd", data_source=data, overrides=quick + ["msd.small=true"])


def test_the_export_command_says_how_to_load_the_folder(ddpm_folder, tmp_path, capsys):
    """With trust_remote_code=True exactly when the folder carries its own pipeline.py."""
    from distmatch.cli import main

    for name, k, extra, remote in (("plain", 1, [], False), ("custom", 2, ["student.timesteps=[700,60]"], True)):
        student = run_distill(ddpm_folder, tmp_path / name, steps=k, overrides=QUIET + extra)
        with pytest.raises(SystemExit) as exc:
            main(["export", "--model", str(student), "--out", str(tmp_path / f"{name}-export")])
        printed = capsys.readouterr().out
        assert exc.value.code == 0 and ("trust_remote_code=True" in printed) == remote, printed
    # run again, the export is there: nothing to do; another student's export in that folder is refused
    folder = tmp_path / "custom-export"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(tmp_path / "custom"), "--out", str(folder)])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith(f"already exported to {folder}: ")
    assert before == {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(tmp_path / "plain"), "--out", str(folder)])
    assert exc.value.code == 2 and "exists and is not empty" in capsys.readouterr().err


def test_an_export_removes_the_drafts_a_killed_export_left(tmp_path):
    """A kill during export left a hidden draft folder beside OUT for good; the next export of OUT removes those
    whose process is gone, and nothing else."""
    import os

    from distmatch.to_diffusers import remove_stale_drafts

    dead, live, other = (tmp_path / ".exp.4194305.ab12", tmp_path / f".exp.{os.getpid()}.cd34", tmp_path / ".exp.notes")
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "unet").mkdir()
    remove_stale_drafts(tmp_path / "exp")
    assert not dead.exists() and live.exists() and other.exists()


def test_a_class_folders_student_and_its_export_sample_and_score_as_the_data(tmp_path, capsys, quick_feature_net):
    """Class sub-folders named 0..2 feed a 3-class diffusers teacher and score its student (they were refused as
    labels '0' not among the classes 0, 1, 2); `sample` of the export gives what the run folder gives, in the
    data's own layout and dtype (it gave [-1, 1] NCHW floats)."""
    from PIL import Image

    from distmatch.cli import main

    teacher, _ = class_folder(tmp_path, "unet")
    rng = np.random.default_rng(0)
    for i in range(12):
        (tmp_path / "png" / str(i % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)[..., 0]).save(tmp_path / "png" / str(i % 3)
                                                                                     / f"{i}.png")
    student = run_distill(teacher, tmp_path / "s", data_source=str(tmp_path / "png"), overrides=QUIET)
    out = export_student(student, tmp_path / "export")
    def cli(*argv) -> int:
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        return done.value.code

    got = {}
    for name, model in (("run", student), ("export", out)):
        assert cli("sample", "--model", str(model), "--n", "4", "--seed", "3",
                   "--out", str(tmp_path / f"{name}.npz")) == 0
        got[name] = np.load(tmp_path / f"{name}.npz")
    assert got["export"]["samples"].dtype == np.uint8 and got["export"]["samples"].shape == (4, 8, 8, 1)
    assert all(np.array_equal(got["run"][k], got["export"][k]) for k in got["run"].files)
    code = cli("evaluate", "--model", str(out), "--data", str(tmp_path / "png"), "--n", "12", "--out",
               str(tmp_path / "e.json"))
    assert code == 0, capsys.readouterr().err


def test_an_unconditional_students_export_reads_back_after_labelled_data(ddpm_folder, tmp_path):
    """Labelled data (digits) distilled into an unconditional teacher: its export samples as the data, with no
    classes (it was refused: the record's data named 10 classes the model does not have)."""
    student = run_distill(ddpm_folder, tmp_path / "s", data_source="digits", overrides=QUIET)
    again = load_model(export_student(student, tmp_path / "export"))
    assert again.num_classes == 0 and again.spec.class_names == []
    x, labels = again.sample(2, seed=0)
    assert labels is None and again.spec.to_user(x).shape == load_model(student).spec.to_user(x).shape


def test_the_best_student_of_a_scored_run_exports_and_says_where_it_was_kept(ddpm_folder, tmp_path,
                                                                                   quick_feature_net):
    """train.eval_every keeps the best-scored student in RUN/best: a model folder that exports like the run's own,
    its card and metadata saying which iteration it is and what it scored."""
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    student = run_distill(ddpm_folder, tmp_path / "s", steps=2, data_source=str(tmp_path / "d.npy"),
                          overrides=QUIET + ["train.eval_every=3", "train.eval_n=16"])
    scores = json.loads((student / "scores.json").read_text())
    assert scores["metric"] == "fd_autoencoder" and [s["it"] for s in scores["scores"]] == [0, 3]
    out = export_student(student / "best", tmp_path / "export")
    record = json.loads((out / "model_index.json").read_text())["_distmatch"]
    assert record["best"] == {"it": scores["best"]["it"], "fd_autoencoder": scores["best"]["fd_autoencoder"], "n": 16}
    assert f"Kept at iteration {scores['best']['it']} of its run" in (out / "README.md").read_text()
    printed, diff = same_images(student / "best", out, 2, 3, tmp_path)
    assert diff < 1e-4, (printed, diff)
