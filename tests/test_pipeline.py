"""End to end through the command: images in the user's layout, the demo and its report, evaluation JSON."""
import json
import re

import numpy as np
import pytest
import torch

from distmatch.cli import main
from distmatch.training.logging import read_log

TINY_UNET = ["--set", "network.channels=[8,16]", "--set", "train.progress=false", "--set", "train.batch_size=16"]


def cli(*argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    return exc.value.code


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: the Inception file is TorchScript
def test_images_round_trip_through_teacher_student_and_sample(tmp_path, monkeypatch, capsys,
                                                             quick_feature_net):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 8, 8, 3), dtype=np.uint8)
    labels = np.array(["cat", "dog", "emu"] * 16)
    np.savez(tmp_path / "pics.npz", images=images, labels=labels)
    t, s = tmp_path / "t", tmp_path / "s"
    assert cli("teacher", "--data", str(tmp_path / "pics.npz"), "--out", str(t), "--set", "train.iters=4",
               *TINY_UNET) == 0
    assert cli("distill", "--teacher", str(t), "--out", str(s), "--steps", "2", "--set", "train.iters=3",
               "--set", "train.progress=false", "--set", "train.batch_size=8") == 0
    assert cli("sample", "--model", str(s), "--n", "5", "--out", str(tmp_path / "x.npz"), "--class", "dog") == 0
    out = np.load(tmp_path / "x.npz")
    assert out["samples"].shape == (5, 8, 8, 3) and out["samples"].dtype == np.uint8
    assert list(out["labels"]) == ["dog"] * 5
    assert cli("sample", "--model", str(t), "--n", "3", "--steps", "2", "--out", str(tmp_path / "y.npy")) == 0
    assert "to " + str(tmp_path / "y.npy") + ": uint8 (3, 8, 8, 3), values 0..255" in capsys.readouterr().out
    # a picture of them: the student's grid, in colour; more than a grid holds is refused before sampling
    from matplotlib.image import imread

    assert cli("sample", "--model", str(s), "--n", "5", "--out", str(tmp_path / "x.png"), "--class", "dog") == 0
    grid = imread(tmp_path / "x.png")
    assert grid.shape[2] >= 3 and np.abs(grid[..., 0] - grid[..., 1]).max() > 0.1  # RGB samples, not grey
    assert cli("sample", "--model", str(s), "--n", "1025", "--out", str(tmp_path / "big.png")) == 2
    assert np.load(tmp_path / "y.npy").shape == (3, 8, 8, 3)
    # scored on a local Inception file when one is named (a stand-in network here), on the in-domain one without
    import torch

    class StandIn(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    from distmatch.eval.inception import InceptionFeatures

    torch.jit.script(StandIn()).save(str(tmp_path / "inception.pt"))
    monkeypatch.setattr(InceptionFeatures, "num_features", 48)  # the stand-in's, where Inception has 2048
    for extra, features in (([], "classifier"), (["--inception", str(tmp_path / "inception.pt")], "inception-v3")):
        assert cli("evaluate", "--model", str(s), "--data", str(tmp_path / "pics.npz"), "--n", "20",
                   "--out", str(tmp_path / "e.json"), *extra) == 0
        scores = json.loads((tmp_path / "e.json").read_text())
        assert scores["feature_net"].startswith(features) and scores["fd"] > 0 and "classes_covered" in scores
        assert ("feature_net_trained_on" in scores) == (features == "classifier")  # the in-domain network's only
    # scored while it trains: on the file DISTMATCH_INCEPTION names, and refused before training if it is missing
    scored = ("distill", "--teacher", str(t), "--steps", "2", "--set", "train.iters=4", "--set", "train.eval_every=2",
              "--set", "train.eval_n=20", "--set", "train.progress=false", "--set", "train.batch_size=8")
    monkeypatch.setenv("DISTMATCH_INCEPTION", str(tmp_path / "absent.pt"))
    assert cli(*scored, "--out", str(tmp_path / "s2")) == 2 and not (tmp_path / "s2").exists()
    monkeypatch.setenv("DISTMATCH_INCEPTION", str(tmp_path / "inception.pt"))
    assert cli(*scored, "--out", str(tmp_path / "s2")) == 0
    scores = json.loads((tmp_path / "s2" / "scores.json").read_text())
    assert scores["metric"] == "fid_inception" and [s["it"] for s in scores["scores"]] == [0, 2, 4]
    assert all(s["fid_inception"] > 0 and "kid" in s for s in scores["scores"])
    assert cli("sample", "--model", str(tmp_path / "s2" / "best"), "--n", "2", "--out", str(tmp_path / "b.npy")) == 0


def test_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ("demo", "--data", "8gaussians", "--out", str(out), "--set", "teacher.train.iters=60",
            "--set", "teacher.network.width=32", "--set", "teacher.network.depth=1",
            "--set", "teacher.train.progress=false", "--set", "distill.train.iters=40",
            "--set", "distill.train.batch_size=64", "--set", "distill.train.progress=false")
    assert cli(*argv) == 0
    assert "sampling the teacher" not in capsys.readouterr().err  # the evaluation shows no bar either
    html = (out / "report.html").read_text()
    assert "Metrics" in html and html.count("data:image/png;base64,") >= 3
    assert "the network fitted to it, which the student was distilled from" in html  # its two teacher rows, said
    assert "swd: sliced Wasserstein distance to the data (lower is better)" in html
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names[0].startswith("teacher 40-step") and any(n.startswith("student 1-step") for n in names)
    by_name = {r["name"]: r for r in rows}
    exact, one_step = rows[0], by_name["teacher 1-step, euler"]
    assert 0 <= exact["swd"] < 0.05 and exact["modes_covered"] == 1.0  # the exact mixture at 40 Heun steps
    assert one_step["swd"] > 5 * exact["swd"]  # one Euler step from σ_max lands near the data's mean
    assert all(0 <= r["modes_covered"] <= 1 and 0 <= r["off_mode"] <= 1 for r in rows)
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    assert timings["distill_s"] == read_log(out / "student")[-1]["time"]  # training time, from the run's log
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "metrics.json", out / "report.html")}
    assert cli(*argv) == 0  # finished: re-running changes nothing, and says so
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
    assert "is finished" in capsys.readouterr().err


def test_evaluate_writes_json(tmp_path):
    t = tmp_path / "t"
    assert cli("teacher", "--data", "25gaussians", "--out", str(t), "--set", "train.iters=30",
               "--set", "network.width=32", "--set", "network.depth=1", "--set", "train.progress=false") == 0
    assert cli("evaluate", "--model", str(t), "--data", "25gaussians", "--n", "1000", "--steps", "32",
               "--out", str(tmp_path / "e.json")) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["nfe"] == 63 and result["split"] == "test"
    assert 0 < result["swd"] < 0.05 and result["modes_covered"] == 1.0  # the exact teacher at Heun-32
    # the measured throughput agrees (within timing noise) with the time the evaluation's own 1000 samples took
    assert 0.05 < result["samples_per_s"] * result["sampling_seconds"] / result["n"] < 20, result


def test_compare_runs_methods_against_one_teacher(tmp_path):
    import subprocess
    import sys
    import time

    # baseline: the peak memory of a process that only imports what a distillation process imports
    probe = ("import torch, distmatch.cli; from distmatch.eval.speed import peak_rss_mb\n"
             "if torch.cuda.is_available(): torch.zeros(1, device='cuda')  # a distillation there holds a context\n"
             "print(peak_rss_mb())")
    baseline = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    baseline_mb = float(baseline) if baseline.strip() != "None" else None
    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    argv = ("compare", "--data", "8gaussians", "--methods", "dmd2,tdm", "--steps", "1,2", "--out", str(out), "--jobs",
            "2", "--set", "teacher.train.iters=40", "--set", "teacher.network.width=32", "--set",
            "teacher.network.depth=1", "--set", "teacher.train.progress=false", "--set", "train.iters=6", "--set",
            "train.batch_size=32", "--set", "train.progress=false")
    code = cli(*argv)
    wall = time.perf_counter() - t0
    assert code == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names == ["teacher (heun)", "teacher network (heun)", "dmd2 1-step", "teacher 1-step, euler", "tdm 2-step",
                     "teacher 2-step, euler"]
    students = [r for r in rows if r["kind"] == "student"]
    assert all(0 < r["distill_s"] < wall and r["nfe"] == r["steps"] for r in students), (wall, students)
    assert 0 < rows[0]["train_s"] < wall and "distill_s" not in rows[0]  # the teacher's time is its training's
    if baseline_mb is not None:  # a tiny run: its own peak is about the imports' (measured 326 vs 283 MiB)
        assert all(0.8 * baseline_mb < r["peak_mb"] < baseline_mb + 1024 for r in students), (baseline_mb, students)
    assert all(r["parallel_jobs"] == 2 for r in students)  # both distillations ran at once, each timed alone
    assert "runs: dmd2 1-step, 6 iterations at batch 32; tdm 2-step, 6 iterations" in (out / "report.html").read_text()
    assert not list(out.glob(".*.threads"))  # the thread budgets handed to the runs are cleaned up
    html = (out / "report.html").read_text()
    assert "dmd2 1-step" in html and html.count("data:image/png;base64,") >= 4
    # the times are the runs' own training, from their logs (summed over resumes, not the last process's)
    logged = [read_log(out / d)[-1]["time"] for d in ("dmd2-1step", "tdm-2step")]
    assert [r["distill_s"] for r in students] == logged
    # re-run when finished: nothing is scored or written again
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "compare.json", out / "report.html")}
    assert cli(*argv) == 0
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}


def test_compare_takes_a_teacher_of_the_users(tmp_path, capsys, quick_feature_net):
    """compare --teacher: every method (an ε teacher's recipe too) distilled from a diffusers folder of the user's
    on --data and scored against them, where compare could only train its own teacher; without --data, or with
    --set teacher.*, it is refused before any work."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                 layers_per_block=1, norm_num_groups=4)
    folder = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, size=(64, 8, 8), dtype=np.uint8))
    out = tmp_path / "cmp"
    base = ["compare", "--teacher", str(folder), "--out", str(out), "--methods", "dmd2,dmd2+low-start"]
    assert cli(*base) == 2 and "compare --teacher needs --data" in capsys.readouterr().err
    assert cli(*base, "--data", str(tmp_path / "x.npy"), "--set", "teacher.train.iters=3") == 2
    assert "--teacher gives one already" in capsys.readouterr().err and not out.exists()
    assert cli(*base, "--data", str(tmp_path / "x.npy"), "--jobs", "1", "--set", "train.iters=2",
               "train.batch_size=8", "train.progress=false") == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["teacher (heun)", "dmd2 1-step", "teacher 1-step, euler",
                                         "dmd2+low-start 1-step"]
    assert not (out / "teacher").exists() and json.loads((out / "dmd2-1step" / "run.json").read_text())["teacher"]
    assert str(folder) in (out / "report.html").read_text()


def test_compare_refuses_unknown_method(tmp_path):
    assert cli("compare", "--methods", "dmd2,nope", "--out", str(tmp_path / "c")) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("methods,data,match", [
    ("dmd2,dmd2+low-start", "digits", "compare trains its own teacher, which predicts"),
    ("dmd,tdm+ode", "digits", "recipe 'tdm\\+ode' is defined for vector data only"),
    ("dmd2,msd", "moons", "msd needs class labels")])
def test_compare_refuses_what_the_data_cannot_run_before_training(tmp_path, capsys, methods, data, match):
    assert cli("compare", "--data", data, "--methods", methods, "--out", str(tmp_path / "c")) == 2
    assert re.search(match, capsys.readouterr().err) and not (tmp_path / "c").exists()


def test_compare_under_a_launcher_is_refused(tmp_path, capsys, monkeypatch):
    """compare starts a process per method itself: under accelerate launch / torchrun its children inherited the
    launcher's rendezvous and waited for each other forever."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli("compare", "--data", "moons", "--methods", "dmd2", "--out", str(tmp_path / "c")) == 2
    assert "run it without a launcher" in capsys.readouterr().err and not (tmp_path / "c").exists()
