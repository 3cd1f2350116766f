"""The command's contract: bad input gets one clear line and exit status 2, no traceback, nothing half-written."""
import json
import subprocess
import sys

import numpy as np
import torch
import pytest

from distmatch.cli import main

TINY = ["--set", "network.width=32", "--set", "network.depth=1", "--set", "network.fourier=8",
        "--set", "train.progress=false"]


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_user_error(capsys, argv, *needles):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distmatch: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "teacher"
    with pytest.raises(SystemExit) as exc:
        main(["teacher", "--data", "8gaussians", "--out", str(out), "--set", "train.iters=20", *TINY])
    assert exc.value.code == 0
    return out


def bad_arrays(tmp_path):
    cases = {}
    np.save(tmp_path / "empty.npy", np.zeros((0, 2), np.float32))
    cases["empty"] = (tmp_path / "empty.npy", "empty")
    np.save(tmp_path / "rank1.npy", np.zeros(10, np.float32))
    cases["rank"] = (tmp_path / "rank1.npy", "rank")
    a = np.random.randn(50, 2).astype(np.float32)
    a[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", a)
    cases["nan"] = (tmp_path / "nan.npy", "NaN")
    a = np.random.randn(50, 2)
    a[7, 0] = np.inf
    np.save(tmp_path / "inf.npy", a)
    cases["inf"] = (tmp_path / "inf.npy", "nf")
    return cases


@pytest.mark.parametrize("case", ["empty", "rank", "nan", "inf"])
def test_bad_arrays(capsys, tmp_path, case):
    path, needle = bad_arrays(tmp_path)[case]
    out = tmp_path / "run"
    assert_user_error(capsys, ["teacher", "--data", str(path), "--out", str(out)], path.name, needle)
    assert not out.exists()


def test_missing_file_and_unknown_preset(capsys, tmp_path):
    assert_user_error(capsys, ["teacher", "--data", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "o")],
                      "nope.npy")
    assert_user_error(capsys, ["teacher", "--data", "ninegaussians", "--out", str(tmp_path / "o")],
                      "ninegaussians", "preset")
    (tmp_path / "garbled.npy").write_bytes(b"not an array at all")
    assert_user_error(capsys, ["teacher", "--data", str(tmp_path / "garbled.npy"), "--out", str(tmp_path / "o")],
                      "garbled.npy")


def test_image_folder_problems(capsys, tmp_path):
    from PIL import Image

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (9, 8)).save(mixed / "b.png")
    assert_user_error(capsys, ["teacher", "--data", str(mixed), "--out", str(tmp_path / "o")], "size")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("L", (8, 8)).save(broken / "a.png")
    (broken / "z.png").write_bytes(b"\x89PNG garbage")
    assert_user_error(capsys, ["teacher", "--data", str(broken), "--out", str(tmp_path / "o")], "z.png")


def test_bad_config(capsys, tmp_path):
    out = str(tmp_path / "o")
    assert_user_error(capsys, ["teacher", "--data", "8gaussians", "--out", out, "--set", "train.lr_typo=1"],
                      "train.lr_typo")
    assert_user_error(capsys, ["teacher", "--data", "8gaussians", "--out", out, "--set", "train.iters=many"],
                      "train.iters", "integer")
    (tmp_path / "c.yaml").write_text("train:\n  batchsize: 3\n")
    assert_user_error(capsys, ["teacher", "--data", "8gaussians", "--out", out, "--config", str(tmp_path / "c.yaml")],
                      "train.batchsize")
    assert_user_error(capsys, ["teacher", "--data", "8gaussians", "--out", out, "--config", str(tmp_path / "no.yaml")],
                      "no.yaml")


def test_zero_steps(capsys, teacher_dir, tmp_path):
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"), "--steps", "0"],
                      "--steps")
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", "4", "--out", str(tmp_path / "x.npy"),
                               "--steps", "0"], "--steps")
    assert not (tmp_path / "s").exists() and not (tmp_path / "x.npy").exists()


def test_one_set_takes_several_pairs_and_usage_errors_name_the_command_once(capsys, teacher_dir, tmp_path):
    import json

    code, _, err = run_cli(capsys, "distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                           "--set", "train.iters=2", "train.batch_size=16", "--set", "train.progress=false")
    assert code == 0, err
    train = json.loads((tmp_path / "s" / "run.json").read_text())["config"]["train"]
    assert (train["iters"], train["batch_size"], train["progress"]) == (2, 16, False)
    line = assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s2"),
                                      "--bogus"], "unrecognized arguments: --bogus")
    assert line.count("distmatch") == 1, line
    line = assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s2"),
                                      "--steps", "x"], "distill: argument --steps")
    assert line.count("distmatch") == 1, line


def test_student_timesteps_need_a_ddpm_family_teacher(capsys, teacher_dir, tmp_path):
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"), "--steps", "2",
                               "--set", "student.timesteps=[700,60]"], "DDPM-family", "student.sigmas")
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"), "--steps", "2",
                               "--set", "student.timesteps=[60,700]"], "strictly decreasing")


def test_distill_from_folder_without_teacher(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(capsys, ["distill", "--teacher", str(tmp_path / "empty"), "--out", str(tmp_path / "s")],
                      "neither a distmatch teacher")
    assert_user_error(capsys, ["distill", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "s")],
                      "missing")


def test_distill_from_an_unfinished_teacher_says_to_finish_it(capsys, tmp_path, teacher_dir):
    import shutil

    shutil.copytree(teacher_dir, tmp_path / "t")
    (tmp_path / "t" / "config.json").unlink()  # as a run stopped before its end leaves it
    (tmp_path / "t" / "model.safetensors").unlink()
    assert_user_error(capsys, ["distill", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s")],
                      "unfinished run (checkpoint at iteration 20)", "re-run the command")


def test_teacher_that_does_not_fit_the_data(capsys, teacher_dir, tmp_path):
    np.save(tmp_path / "three_d.npy", np.random.randn(100, 3).astype(np.float32))
    line = assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                                      "--data", str(tmp_path / "three_d.npy")], "three_d.npy", "(3,)")
    assert "(2,)" in line
    assert not (tmp_path / "s").exists()


def test_unknown_method_and_class(capsys, teacher_dir, tmp_path):
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                               "--method", "magic"], "magic")
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", "4", "--out", str(tmp_path / "x.npy"),
                               "--class", "3"], "not class-conditional")


def test_sample_writes_users_layout(capsys, teacher_dir, tmp_path):
    code, out, _ = run_cli(capsys, "sample", "--model", str(teacher_dir), "--n", "10", "--out",
                           str(tmp_path / "x.npy"), "--steps", "4")
    assert code == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (10, 2) and x.dtype == np.float32
    assert "7 network evaluations" in out  # Heun, 4 steps


def test_sample_draws_a_picture_of_its_samples_or_says_why_it_cannot(capsys, teacher_dir, tmp_path):
    """--out x.png draws the samples (a scatter for vectors, a grid for images: tests/test_pipeline.py); data a
    picture cannot show is refused before any sampling."""
    from matplotlib.image import imread

    pics = []
    for seed in ("0", "0", "1"):
        code, out, err = run_cli(capsys, "sample", "--model", str(teacher_dir), "--n", "300", "--steps", "3",
                                 "--seed", seed, "--out", str(tmp_path / f"x{len(pics)}.png"))
        assert code == 0 and "drew 300 samples (5 network evaluations each)" in out, err
        pics.append(imread(tmp_path / f"x{len(pics)}.png"))
    body = [pic[pic.shape[0] // 5:] for pic in pics]  # below the title, which names the seed
    assert pics[0].ndim == 3 and np.array_equal(pics[0], pics[1]) and not np.array_equal(body[0], body[2])
    np.save(tmp_path / "line.npy", np.random.default_rng(0).normal(size=(64, 1)).astype(np.float32))
    assert run_cli(capsys, "teacher", "--data", str(tmp_path / "line.npy"), "--out", str(tmp_path / "t1"),
                   "--set", "train.iters=2", *TINY)[0] == 0
    assert_user_error(capsys, ["sample", "--model", str(tmp_path / "t1"), "--n", "4", "--out",
                               str(tmp_path / "l.png")], "1-D samples make no picture")
    assert not (tmp_path / "l.png").exists()
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", "4", "--out", str(tmp_path / "x.jpg")],
                      "must end in .npy or .npz (the samples) or .png")


def test_sampling_a_teacher_shows_its_network_evaluations_and_changes_no_sample(capsys, teacher_dir, tmp_path):
    """A teacher's many-step sampler runs under a bar that counts its network evaluations (Heun 4 steps: 7 per
    batch); the samples are those drawn without it."""
    from distmatch.models import load_model

    teacher = load_model(teacher_dir)
    capsys.readouterr()
    shown, _ = teacher.sample(10, steps=4, seed=3, batch_size=4, progress=True)
    bar = capsys.readouterr().err
    assert torch.equal(shown, teacher.sample(10, steps=4, seed=3, batch_size=4)[0])
    assert "sampling the teacher (4 steps)" in bar and "0/21 [" in bar  # 3 batches x 7 evaluations


def test_evaluate_times_a_many_step_sampler_once(teacher_dir):
    """Speed is the median of 3 timed repeats after a warm-up, except for a sampler of 100 or more network
    evaluations, which warms itself up and is timed once (a 1000-step teacher would pay minutes more)."""
    import distmatch

    few, many = (distmatch.evaluate(teacher_dir, "8gaussians", n=64, steps=s)["speed"]["repeats"] for s in (4, 60))
    assert (few, many) == (3, 1)


def test_sample_chooses_its_device_and_refuses_one_that_is_not_there(capsys, teacher_dir, tmp_path):
    """--device auto takes a GPU when one is seen (here the CPU: the same samples as --device cpu); a device that
    is not there, or no device at all, is one line; so is MPS, which lacks the float64 the noise levels need."""
    import torch

    outs = []
    for device in ("cpu", "auto"):
        code, _, err = run_cli(capsys, "sample", "--model", str(teacher_dir), "--n", "6", "--steps", "3",
                               "--device", device, "--out", str(tmp_path / f"{device}.npy"))
        assert code == 0, err
        outs.append(np.load(tmp_path / f"{device}.npy"))
    assert np.array_equal(*outs)
    argv = ["sample", "--model", str(teacher_dir), "--n", "2", "--out", str(tmp_path / "y.npy"), "--device"]
    assert_user_error(capsys, argv + ["tpu7"], "unknown device 'tpu7'")
    assert_user_error(capsys, argv + ["mps"], "'mps' is not supported", "float64")
    if not torch.cuda.is_available():
        assert_user_error(capsys, argv + ["cuda"], "device 'cuda' is not available", "0 CUDA device")
    assert_user_error(capsys, ["evaluate", "--model", str(teacher_dir), "--data", "moons", "--n", "8",
                               "--out", str(tmp_path / "e.json"), "--device", "cuda:9"], "'cuda:9' is not available")


def test_evaluate_needs_enough_points_and_says_a_users_file_is_scored_whole(capsys, teacher_dir, tmp_path):
    """One reference point gave NaN metrics with exit 0 (and images a traceback from KID or PRDC)."""
    np.save(tmp_path / "one.npy", np.zeros((1, 2), np.float32))
    assert_user_error(capsys, ["evaluate", "--model", str(teacher_dir), "--data", str(tmp_path / "one.npy"),
                               "--out", str(tmp_path / "e.json")], "at least 10 samples and 10 reference points")
    assert_user_error(capsys, ["evaluate", "--model", str(teacher_dir), "--data", "8gaussians", "--n", "3",
                               "--out", str(tmp_path / "e.json")], "got n=3")
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    code, _, err = run_cli(capsys, "evaluate", "--model", str(teacher_dir), "--data", str(tmp_path / "mine.npy"),
                           "--n", "50", "--steps", "2", "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["split"] == "whole file" and result["n_reference"] == 50  # not "train": all of it


def test_under_a_multi_process_launch_only_the_main_process_says_it(capsys, monkeypatch, tmp_path):
    """Every process of `accelerate launch` reads the same input and refuses it alike: one line, from rank 0."""
    argv = ["distill", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "s")]
    monkeypatch.setenv("RANK", "1")
    assert run_cli(capsys, *argv)[::2] == (2, "")
    monkeypatch.setenv("RANK", "0")
    assert_user_error(capsys, argv, "none")


def test_real_process_prints_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "distmatch.cli", "teacher", "--data", str(tmp_path / "none.npz"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "none.npz" in done.stderr and "Traceback" not in done.stderr


def test_the_documented_launch_passes_the_one_line_on(tmp_path):
    """The README launches with `accelerate launch -q`: without -q accelerate re-raises a refused command as its
    own traceback; with it the command's one line is all the user reads, and the exit status stays non-zero."""
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "distmatch.cli", "distill", "--teacher", str(tmp_path / "none"),
                           "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.count("distmatch: error:") == 1 and "Traceback" not in done.stderr, done.stderr


def test_settings_reference_is_current():
    """docs/settings.md is generated from the option dataclasses; regenerate it when an option changes."""
    from pathlib import Path

    from distmatch.settings_doc import render

    page = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert page.read_text() == render(), "docs/settings.md is stale: python -m distmatch.settings_doc > docs/settings.md"


def test_command_and_api_reference_is_current():
    """docs/reference.md is generated from the parser and the API's docstrings; regenerate it when either changes."""
    from pathlib import Path

    from distmatch.reference import render

    page = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
    text = render()
    assert page.read_text() == text, "docs/reference.md is stale: python -m distmatch.reference > docs/reference.md"
    for name in ("teacher", "distill", "sample", "evaluate", "export", "demo", "compare"):
        assert f"### distmatch {name}\n" in text
    for name in ("wrap_teacher", "distill", "load", "evaluate", "export", "train_teacher"):
        assert f"distmatch.{name}(" in text


def test_settings_reference_has_every_key_with_its_text():
    from distmatch.config import describe_fields
    from distmatch.methods import METHODS, config_class
    from distmatch.settings_doc import render

    page = render()
    for name in METHODS:
        for key, _, _ in describe_fields(config_class(name)):
            assert f"`{key}`" in page, key
    assert "| `dmd2.critic_ratio` | int | `5` | `5` | critic updates per student update" in page


def test_python_dash_m_is_the_command():
    """`python -m distmatch` is the `distmatch` command (for environments whose scripts are not on PATH)."""
    r = subprocess.run([sys.executable, "-m", "distmatch", "export", "--model", "/nonexistent", "--out", "x"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("distmatch: error:") and "/nonexistent" in r.stderr


def test_an_output_path_through_a_file_is_one_line(capsys, tmp_path, teacher_dir):
    """--out naming a file (a run folder) or inside one (an output file) is the user's path, not a traceback;
    sample and evaluate say so before they sample."""
    (tmp_path / "afile").write_text("")
    assert_user_error(capsys, ["teacher", "--data", "8gaussians", "--out", str(tmp_path / "afile"), *TINY],
                      "afile", "exists")
    for argv in (["sample", "--model", str(teacher_dir), "--n", "4", "--out", str(tmp_path / "afile" / "x.npy")],
                 ["evaluate", "--model", str(teacher_dir), "--data", "8gaussians",
                  "--out", str(tmp_path / "afile" / "e.json")]):
        assert_user_error(capsys, argv, "afile is a file, not a folder")
    # the model's own files are not outputs (an evaluation written over config.json broke the model for good)
    before = (teacher_dir / "config.json").read_bytes()
    assert_user_error(capsys, ["evaluate", "--model", str(teacher_dir), "--data", "8gaussians",
                               "--out", str(teacher_dir / "config.json")], "is a file of the model folder")
    assert (teacher_dir / "config.json").read_bytes() == before
    (tmp_path / "bad").mkdir()
    bad = ["sample", "--model", str(tmp_path / "bad"), "--n", "2", "--out", str(tmp_path / "x.npy")]
    for text in ('{"kind": "teacher", "n": 1000}', "[1, 2]"):  # a score file, say, or not even an object
        (tmp_path / "bad" / "config.json").write_text(text)
        assert_user_error(capsys, bad, "does not describe a distmatch teacher or student")


def test_a_file_size_limit_is_one_line_naming_the_file(tmp_path, teacher_dir):
    """A full disk or a file-size limit while writing: one line naming the user's file (not our temporary one), and
    no half-written or temporary file left."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "x.npy"
    done = subprocess.run([sys.executable, "-m", "distmatch.cli", "sample", "--model", str(teacher_dir), "--n",
                           "5000", "--out", str(out)], capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # after the sampling bar
    assert "Traceback" not in done.stderr
    assert last.startswith(f"distmatch: error: cannot write to {out}: file too large")
    assert list(tmp_path.iterdir()) == []


def test_settings_read_yes_and_no_as_words_and_name_a_bad_network_size(tmp_path):
    """conditional=yes is the documented value (YAML 1.1 made it a boolean and refused it); a boolean setting
    still takes yes/no; a zero among network.channels is refused naming that key, not met inside a conv."""
    from distmatch.config import resolve
    from distmatch.errors import UserError
    from distmatch.teachers.train import TeacherConfig

    cfg = resolve(TeacherConfig, overrides=["conditional=yes", "train.preview=no", "train.progress=true"])
    assert cfg.conditional == "yes" and cfg.train.preview is False and cfg.train.progress is True
    for bad, key in (("network.channels=[8,0]", "network.channels"), ("network.width=0", "network.width"),
                     ("network.depth=-1", "network.depth")):
        with pytest.raises(UserError, match=f"'{key}' must be"):
            resolve(TeacherConfig, overrides=[bad]).network.validate()
    for text in ("train.iters: 5\nnetwork:\n  width: 16\n", '{"train.iters": 5, "network": {"width": 16}}'):
        (tmp_path / "c.yaml").write_text(text)
        cfg = resolve(TeacherConfig, file=str(tmp_path / "c.yaml"))  # dotted keys, as docs/settings.md lists them
        assert cfg.train.iters == 5 and cfg.network.width == 16
    (tmp_path / "c.yaml").write_text("train.iters: five\n")
    with pytest.raises(UserError, match="'train.iters' expects an integer"):
        resolve(TeacherConfig, file=str(tmp_path / "c.yaml"))
    for bad, key in (("label_dropout=2", "label_dropout"), ("sigma_data=-1", "sigma_data")):
        with pytest.raises(UserError, match=f"'{key}' must be .*, got"):
            resolve(TeacherConfig, overrides=[bad]).validate()


@pytest.mark.parametrize("command, item, message", [
    ("distill", "dmd2.guidance=nan", "'dmd2.guidance' expects a finite number"),  # trained with no DM gradient
    ("distill", "student.start_sigma_max=nan", "'student.start_sigma_max' expects a finite number"),
    ("distill", "train.lr=1e999", "'train.lr' expects a finite number"),
    ("distill", "dmd2.lr_critic=-1", "dmd2.lr_critic"), ("distill", "train.weight_decay=-1", "train.weight_decay"),
    ("teacher", "network.fourier_scale=0", "'network.fourier_scale' must be > 0"),
    ("teacher", "network.fourier=-1", "'network.fourier' must be >= 0"),
    ("teacher", "network.dropout=2.5", "'network.dropout' must be in [0, 1)"),
    ("teacher", "network.noise_fourier_cap=-1", "'network.noise_fourier_cap' must be >= 0"),
    ("teacher", "train.warmup=-1", "train.warmup"), ("teacher", "p_std=0", "'p_std' must be > 0")])
def test_a_setting_outside_its_range_is_one_line_before_any_work(capsys, teacher_dir, tmp_path, command, item,
                                                                  message):
    """NaN passed every `< 0` check and then trained something else in silence; others were tracebacks or ran."""
    where = ["--teacher", str(teacher_dir)] if command == "distill" else ["--data", "8gaussians"]
    assert_user_error(capsys, [command, *where, "--out", str(tmp_path / "o"), "--set", item], message)
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--set", "distill.train.itres=5"], "unknown config key 'distill.train.itres'"),
    (["compare", "--methods", "dmd2,tdm", "--set", "dmd2.guidance=-1"], "dmd2.guidance"),
    (["compare", "--methods", "dmd2,tdm", "--set", "tdm.huber_c=abc"], "'tdm.huber_c' expects a number")])
def test_demo_and_compare_refuse_a_distillation_setting_before_training_the_teacher(capsys, tmp_path, argv,
                                                                                    message):
    assert_user_error(capsys, [*argv, "--data", "moons", "--out", str(tmp_path / "o")], message)
    assert not (tmp_path / "o").exists()  # the teacher (minutes at its defaults) was trained first


def test_demo_and_compare_help_give_set_keys_they_accept(capsys):
    """Their --set keys carry a stage prefix; the help's example must be one they take."""
    from distmatch.report.compare import route_overrides
    from distmatch.report.demo import split_overrides

    for command, take in (("demo", lambda items: split_overrides(items)),
                          ("compare", lambda items: route_overrides(items, ["dmd2"]))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        example = text.split("--set ")[-1].split(" (repeatable)")[0].split()
        assert example and all("=" in item for item in example), text
        take(example)  # accepted, not refused


def test_refusals_that_were_tracebacks(capsys, teacher_dir, tmp_path):
    """A seed beyond 32 bits, an empty --out, an output path the file system refuses, and a teacher whose
    config.json was edited so that its weights no longer fit, and a student's folder holding a teacher's weights: one
    short line each, status 2."""
    import shutil

    big = str(2 ** 64)
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", "2", "--seed", big, "--out",
                               str(tmp_path / "x.npy")],
                      "--seed must be in 0..")
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                               "--set", f"train.seed={big}"], "train.seed")
    assert_user_error(capsys, ["distill", "--teacher", str(teacher_dir), "--out", ""], "--out is empty")
    code, _, err = run_cli(capsys, "sample", "--model", str(teacher_dir), "--n", "2",
                           "--out", str(tmp_path / ("a" * 300 + ".npy")))  # after the sampler's progress bar
    assert code == 2 and err.strip().endswith("file name too long") and "Traceback" not in err, err
    edited = tmp_path / "edited"
    shutil.copytree(teacher_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["network"]["width"] *= 2
    (edited / "config.json").write_text(json.dumps(cfg))
    assert_user_error(capsys, ["sample", "--model", str(edited), "--n", "2", "--out", str(tmp_path / "x.npy")],
                      "do not fit together")
    code, _, err = run_cli(capsys, "distill", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                           "--set", "train.iters=2", "train.batch_size=32", "train.progress=false",
                           "train.preview=false")
    assert code == 0, err
    shutil.copy(teacher_dir / "model.safetensors", tmp_path / "s" / "model.safetensors")  # a teacher's weights
    line = assert_user_error(capsys, ["sample", "--model", str(tmp_path / "s"), "--n", "2", "--out",
                                      str(tmp_path / "x.npy")], "weights file holds none of its")
    assert len(line) < 200, line  # torch's message listed every key: 1,500 characters


def test_sample_refuses_before_sampling_what_it_could_not_write(capsys, teacher_dir, tmp_path):
    """A sample count larger than the machine's memory ran for days before failing, and --out naming a folder
    failed only after the sampling: both are said first. A data file given as the model is named as a file."""
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", str(10 ** 13), "--out",
                               str(tmp_path / "x.npy")], "--n 10000000000000 samples of shape (2,) take 8e+04 GB")
    (tmp_path / "d.npy").mkdir()
    assert_user_error(capsys, ["sample", "--model", str(teacher_dir), "--n", "2", "--out", str(tmp_path / "d.npy")],
                      "d.npy: it is a folder")
    np.save(tmp_path / "data.npy", np.zeros((4, 2)))  # data named as the model: not "its training was interrupted"
    assert_user_error(capsys, ["sample", "--model", str(tmp_path / "data.npy"), "--n", "2", "--out",
                               str(tmp_path / "x.npy")], "data.npy is a file, not a model folder")


def test_out_of_memory_is_one_line(capsys, monkeypatch, tmp_path):
    """A batch too large for the machine fails in torch's allocator (CPU or CUDA): one line with the size asked for
    and what to lower, status 2; any other RuntimeError is still a bug and keeps its traceback."""
    from distmatch import commands

    for message, size in [("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 25600000000 bytes. Error code 12", "25.6 GB"),
                          ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity", "2.00 GiB")]:
        def fail(args, message=message):
            raise RuntimeError(message)
        monkeypatch.setattr(commands, "teacher", fail)
        assert_user_error(capsys, ["teacher", "--data", "moons", "--out", str(tmp_path / "t")],
                          f"out of memory (an allocation of {size}): lower the batch (train.batch_size)")
    monkeypatch.setattr(commands, "teacher", lambda args: torch.zeros(2) @ torch.zeros(3))
    with pytest.raises(RuntimeError, match="size mismatch|shapes|size"):
        main(["teacher", "--data", "moons", "--out", str(tmp_path / "t")])


def test_a_teachers_data_file_changed_since_is_not_distilled_on(capsys, tmp_path):
    """Without --data a student is distilled on the teacher's own data file; one replaced since (or gone) is
    refused in one line, where it was used in silence."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d.npy", rng.normal(size=(200, 2)).astype(np.float32))
    teacher = tmp_path / "t"
    assert run_cli(capsys, "teacher", "--data", str(tmp_path / "d.npy"), "--out", str(teacher),
                   "--set", "train.iters=2", *TINY)[0] == 0
    np.save(tmp_path / "d.npy", 100 * rng.normal(size=(50, 2)).astype(np.float32))
    argv = ["distill", "--teacher", str(teacher), "--out", str(tmp_path / "s"), "--set", "train.iters=2"]
    assert_user_error(capsys, argv, "have changed since it was trained", "--data")
    (tmp_path / "d.npy").unlink()
    assert_user_error(capsys, argv, "are gone")


def test_a_setting_given_twice_is_refused(capsys, tmp_path):
    """The last of two values used to win in silence, even after an invalid first; --steps against student.steps
    and a method listed twice in compare alike."""
    out = ["--out", str(tmp_path / "s")]
    assert_user_error(capsys, ["distill", "--teacher", "t", *out, "--set", "train.iters=abc", "train.iters=2"],
                      "train.iters is given twice")
    assert_user_error(capsys, ["distill", "--teacher", "t", *out, "--steps", "2", "--set", "student.steps=3"],
                      "student.steps is given twice", "--steps 2")
    assert_user_error(capsys, ["compare", "--methods", "dmd2,dmd,dmd2", *out], "dmd2 at 1 step(s) is listed twice")


def test_a_student_config_without_levels_is_refused_as_damaged(capsys, teacher_dir, tmp_path):
    """A student whose config.json lost its levels read "trained for at most 0 step; got --steps 1" though no
    --steps was given: now the folder is named as edited or damaged."""
    import shutil

    student = tmp_path / "s"
    assert run_cli(capsys, "distill", "--teacher", str(teacher_dir), "--out", str(student), "--set",
                   "train.iters=2", "train.batch_size=16", "train.progress=false", "dmd2.gan=false")[0] == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(student, damaged)
    cfg = json.loads((damaged / "config.json").read_text())
    cfg["sigmas"] = []
    (damaged / "config.json").write_text(json.dumps(cfg))
    assert_user_error(capsys, ["sample", "--model", str(damaged), "--n", "2", "--out", str(tmp_path / "x.npy")],
                      "names no noise levels", "edited or damaged")


def test_distmatch_without_a_command_names_the_commands(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and err.strip().startswith("distmatch: error: give a command: teacher, distill, sample,")


@pytest.mark.parametrize("command,key", [("demo", "teacher.train.itres"), ("compare", "teacher.train.itres")])
def test_a_stage_settings_typo_is_named_as_typed(capsys, tmp_path, command, key):
    """demo and compare took the stage's prefix off the key they refused ('train.itres' for teacher.train.itres)."""
    assert_user_error(capsys, [command, "--data", "moons", "--out", str(tmp_path / "d"), "--set", f"{key}=10"],
                      f"unknown config key '{key}'")
    assert not (tmp_path / "d" / "student").exists()
