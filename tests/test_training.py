"""The trainer: resuming equals not stopping, Ctrl-C checkpoints, settings guard, atomic files, two processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distmatch import checkpoint as ckpt
from distmatch.methods import pairs, run_distill
from distmatch.errors import UserError
from distmatch.teachers.train import train_teacher
from distmatch.training.logging import read_log
from distmatch.training.trainer import THREADS_FILE_ENV, follow_thread_budget, read_checkpoint_iteration

TINY_NET = ["network.width=32", "network.depth=1", "network.fourier=8"]
QUIET = ["train.progress=false"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher("8gaussians", out, overrides=TINY_NET + QUIET + ["train.iters=30", "train.batch_size=128"])


def distill_args(extra=()):
    """The tests' short settings, each key once (the command refuses a key given twice): `extra` wins."""
    given = {item.split("=", 1)[0] for item in extra}
    base = [item for item in ("train.batch_size=32", "train.ckpt_every=7", "dmd2.critic_ratio=2",
                              "train.preview=false")  # previews have tests of their own, which turn them on
            if item.split("=", 1)[0] not in given]
    return QUIET + base + list(extra)


def weights(run):
    return load_file(str(Path(run) / ckpt.MODEL))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("extra", [[], ["student.critic_per_step=true", "dmd2.gan=true"]], ids=["one", "per-step"])
def test_resumed_run_equals_uninterrupted(tiny_teacher, tmp_path, extra, capsys):
    """A 2-step student (two optimizers, EMA, data stream, shared step draws; one critic, or one per step with GAN
    heads) resumed halfway. Halfway is simulated by a run of 10 iterations extended to 20, which would move the
    end of the ODE warm-up (a share of train.iters), so it is off here (see the next test for resuming inside it)."""
    extra = ["dmd2.ode_init=0", *extra]
    run_distill(tiny_teacher, tmp_path / "full", steps=2, overrides=distill_args(["train.iters=20", *extra]))
    run_distill(tiny_teacher, tmp_path / "half", steps=2, overrides=distill_args(["train.iters=10", *extra]))
    path = tmp_path / "half" / "log.jsonl"
    first = json.loads(path.read_text().splitlines()[-1])
    path.write_text(path.read_text().replace(json.dumps(first), json.dumps({**first, "time": 1000.0})))
    capsys.readouterr()
    run_distill(tiny_teacher, tmp_path / "half", steps=2, overrides=distill_args(["train.iters=20", *extra]))
    assert "train.iters grew from 10 to 20" in capsys.readouterr().err  # said: shares of the run now span 20
    assert_same_weights(tmp_path / "full", tmp_path / "half")
    log = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["it"] for r in log] == sorted({r["it"] for r in log})  # one run, no repeated iterations
    assert log[-1]["time"] > 1000.0  # its clock goes on from the first half's (made 1000 s long): training time


def test_previews_draw_the_student_as_sample_loads_it_and_leave_training_alone(tiny_teacher, tmp_path):
    """A picture at the start, at every checkpoint and at the end; each is the saved model's samples (the EMA
    weights, seed 0), and drawing them changes nothing the run computes."""
    from matplotlib.image import imread

    from distmatch.models import load_model
    from distmatch.training.preview import write_preview

    run_distill(tiny_teacher, tmp_path / "on", steps=2, overrides=distill_args(["train.iters=14",
                                                                               "train.preview=true"]))
    run_distill(tiny_teacher, tmp_path / "off", steps=2, overrides=distill_args(["train.iters=14",
                                                                                "train.preview=false"]))
    shown = tmp_path / "on" / "previews"
    assert sorted(p.name for p in shown.iterdir()) == ["it0000000.png", "it0000007.png", "it0000014.png"]
    assert not (tmp_path / "off" / "previews").exists()
    assert_same_weights(tmp_path / "on", tmp_path / "off")
    redrawn = write_preview(tmp_path / "redrawn", load_model(tmp_path / "on"), 14)
    assert np.array_equal(imread(shown / "it0000014.png"), imread(redrawn))
    assert not np.array_equal(imread(shown / "it0000000.png"), imread(redrawn))  # training moved the samples


def test_every_checkpoint_has_its_preview_drawn_first(tiny_teacher, tmp_path, monkeypatch):
    """A run killed after a checkpoint and before its preview never drew it (a re-run resumes past it, and a
    finished one does nothing): the preview is drawn first."""
    from distmatch.training import trainer

    seen, save = [], trainer.save_checkpoint

    def save_checkpoint(out, *args, **kwargs):
        seen.append((args[-1], (Path(out) / "previews" / f"it{args[-1]:07d}.png").is_file()))
        return save(out, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)
    run_distill(tiny_teacher, tmp_path / "s", steps=1, overrides=distill_args(["train.iters=10", "train.preview=true"]))
    assert seen == [(7, True), (10, True)], seen


def test_a_preview_that_fails_is_reported_once_and_the_run_goes_on(tiny_teacher, tmp_path, monkeypatch, capsys):
    from distmatch.training import preview

    calls = []

    def broken(out, model, it, writer=None):
        calls.append(it)
        raise OSError("No space left on device")

    monkeypatch.setattr(preview, "write_preview", broken)
    run_distill(tiny_teacher, tmp_path / "s", steps=2, overrides=distill_args(["train.iters=14",
                                                                              "train.preview=true"]))
    warned = [line for line in capsys.readouterr().err.splitlines() if "preview" in line]
    assert calls == [0] and len(warned) == 1 and "No space left on device" in warned[0], warned
    assert (tmp_path / "s" / "model.safetensors").is_file()  # the run finished and saved its student


def test_run_stopped_inside_the_ode_warmup_resumes_exactly(tiny_teacher, tmp_path, stop_before):
    """dmd2.ode_init = 0.6 of 20 iterations: stopped at iteration 10 (as by Ctrl-C), inside the regression on the
    teacher's ODE pairs, and re-run, it ends where an uninterrupted run ends, with the cached pairs."""
    from distmatch import Interrupted

    args = distill_args(["train.iters=20", "dmd2.ode_init=0.6", "dmd2.ode_pairs=64", "train.log_every=5"])
    run_distill(tiny_teacher, tmp_path / "full", overrides=args)
    stop_before(10)
    with pytest.raises(KeyboardInterrupt, match="stopped at iteration 10 of 20") as stopped:  # as Ctrl-C is
        run_distill(tiny_teacher, tmp_path / "half", overrides=args)
    assert isinstance(stopped.value, Interrupted)
    stop_before(None)
    assert read_checkpoint_iteration(tmp_path / "half") == 10
    run_distill(tiny_teacher, tmp_path / "half", overrides=args)
    assert_same_weights(tmp_path / "full", tmp_path / "half")
    logs = [json.loads(line) for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert "loss_reg" in logs[0] and "loss_critic" not in logs[0] and "loss_critic" in logs[-1]


def test_a_resumed_runs_log_reads_as_an_uninterrupted_runs(tiny_teacher, tmp_path, stop_before):
    """Stopped at 9 (checkpoint there), logging every 5: the record at 10 averaged iterations 10 alone, and the
    stop wrote a record at 9 that an uninterrupted run has not. The unfinished interval now goes in the checkpoint."""
    args = distill_args(["train.iters=20", "train.log_every=5"])
    run_distill(tiny_teacher, tmp_path / "full", overrides=args)
    stop_before(9)
    with pytest.raises(KeyboardInterrupt):
        run_distill(tiny_teacher, tmp_path / "half", overrides=args)
    stop_before(None)
    run_distill(tiny_teacher, tmp_path / "half", overrides=args)

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]

    assert [r["it"] for r in records("half")] == [5, 10, 15, 20]
    assert records("half") == records("full")


def test_a_temporary_left_by_a_kill_mid_write_is_removed_when_the_run_goes_on(tiny_teacher, tmp_path):
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))
    stale = [tmp_path / "s" / ".checkpoint.safetensors.4242.9e9365a6.tmp", tmp_path / "s" / ".notes.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=6"]))
    assert not stale[0].exists() and stale[1].exists()  # atomic_write_bytes's own names only


def test_resume_refuses_changed_settings(tiny_teacher, tmp_path):
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=3"]))
    with pytest.raises(UserError, match="different settings.*train.lr"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=6", "train.lr=0.01"]))
    with pytest.raises(UserError, match=r"different settings \(method: 'dmd2' -> 'dmd'") as refused:  # named first
        run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=QUIET + ["train.iters=6"])
    assert "config.dmd2: {...} -> None" in str(refused.value)  # a whole section in short, not its every key


def test_a_run_made_before_a_setting_existed_resumes_only_as_it_ran():
    """A key added since a run was made changes nothing, unless its default computes otherwise than before (tdm's
    move, fdistill's discriminator, msd's ADM stage): then the run ran as the old value and resuming under another
    is refused."""
    from distmatch.training.guards import differences

    old = {"config": {"tdm": {"huber_c": 1.0}, "fdistill": {"bins": 10}, "msd": {"students": 2}}}
    new = {"config": {"tdm": {"huber_c": 1.0, "move": "ddim", "later": 3}, "fdistill": {"bins": 10,
                                                                                        "features": "teacher"},
                      "msd": {"students": 2, "gan": True, "adm_start": 0.5}}}
    assert differences(old, new) == ["config.fdistill.features: 'critic' -> 'teacher'",
                                     "config.msd.gan: False -> True", "config.tdm.move: 'renoise' -> 'ddim'"]
    new["config"]["tdm"]["move"], new["config"]["fdistill"]["features"] = "renoise", "critic"
    new["config"]["msd"]["gan"] = False
    assert differences(old, new) == []


def test_resume_compares_the_levels_used_not_how_they_were_given(tiny_teacher, tmp_path, capsys):
    """A 1-step student uses σ_max whatever sigma_top / sigma_last say (and says so); a 2-step one's levels must
    agree. start_sigma_max caps an ε teacher's start only: on this x̂_0 teacher it is refused, not ignored."""
    run_distill(tiny_teacher, tmp_path / "one", overrides=distill_args(["train.iters=3"]))
    run_distill(tiny_teacher, tmp_path / "one", overrides=distill_args(["train.iters=6", "student.sigma_top=3.0"]))
    assert read_checkpoint_iteration(tmp_path / "one") == 6
    assert "warning: student.sigma_top places the levels after a K-step student's first" in capsys.readouterr().err
    run_distill(tiny_teacher, tmp_path / "two", steps=2, overrides=distill_args(["train.iters=3"]))
    with pytest.raises(UserError, match="different settings.*levels"):
        run_distill(tiny_teacher, tmp_path / "two", steps=2,
                    overrides=distill_args(["train.iters=6", "student.sigma_last=0.5"]))
    with pytest.raises(UserError, match="different settings.*k_step.critic_per_step"):
        run_distill(tiny_teacher, tmp_path / "two", steps=2,
                    overrides=distill_args(["train.iters=6", "student.critic_per_step=true"]))
    with pytest.raises(UserError, match=r"start_sigma_max caps .* this teacher predicts x̂_0 \(EDM\)"):
        run_distill(tiny_teacher, tmp_path / "three", overrides=distill_args(["student.start_sigma_max=5"]))


def test_rerun_of_finished_run_changes_nothing(tiny_teacher, tmp_path):
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))
    before = weights(tmp_path / "s")
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))
    after = weights(tmp_path / "s")
    assert all(torch.equal(before[k], after[k]) for k in before)
    now = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert now.keys() == files.keys()  # no second TensorBoard file, no new log
    assert now == files  # nothing rewritten, so a finished run re-runs in a read-only folder


def test_a_damaged_checkpoint_says_what_to_do(tiny_teacher, tmp_path):
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=7"]))
    (tmp_path / "s" / ckpt.CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(UserError, match="checkpoint.safetensors: .*damaged: .*delete the checkpoint only to train "
                                        "the run again from the start"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=9"]))
    (tmp_path / "s" / ckpt.CHECKPOINT).unlink()  # as told: its own finished folder trains again
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=9"]))
    assert read_checkpoint_iteration(tmp_path / "s") == 9


def test_a_log_with_lines_not_its_own_resumes(tiny_teacher, tmp_path):
    """JSON lines that are not log records (a number, a string, a list) made a resumed run fail with an
    AttributeError: they are dropped like a line cut by a kill."""
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=7"]))
    with open(tmp_path / "s" / "log.jsonl", "a") as f:
        f.write('5\n"x"\n[1, 2]\n{"a": 1}\n{"it": 3\n')
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=9"]))
    lines = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert all(isinstance(r, dict) and "it" in r for r in lines) and lines[-1]["it"] == 9


def test_a_folder_holding_another_model_is_not_overwritten(tiny_teacher, tmp_path):
    """--out at a folder with a model but no checkpoint (a teacher kept without it, a user's own files) was
    overwritten in silence; this run's own finished folder without its checkpoint is trained again."""
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(tiny_teacher, kept, ignore=shutil.ignore_patterns(ckpt.CHECKPOINT))
    before = weights(kept)
    with pytest.raises(UserError, match="holds config.json of another model, and no checkpoint of this run"):
        run_distill(tiny_teacher, kept, overrides=distill_args(["train.iters=2"]))
    assert all(torch.equal(before[k], v) for k, v in weights(kept).items())
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=2"]))
    first = weights(tmp_path / "s")
    (tmp_path / "s" / ckpt.CHECKPOINT).unlink()
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=2"]))
    assert all(torch.equal(first[k], v) for k, v in weights(tmp_path / "s").items())


def test_a_run_resumes_only_on_its_own_data_and_teacher(tmp_path):
    """Only train.iters may grow: other data, or the teacher folder retrained in place, are refused."""
    teacher = train_teacher("moons", tmp_path / "t", overrides=TINY_NET + QUIET + ["train.iters=5"])
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(256, 2)).astype(np.float32))
    np.save(tmp_path / "b.npy", 3 + rng.normal(size=(256, 2)).astype(np.float32))
    run_distill(teacher, tmp_path / "s", overrides=distill_args(["train.iters=2"]), data_source=str(tmp_path / "a.npy"))
    with pytest.raises(UserError, match="different settings \\(distill_data"):
        run_distill(teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]),
                    data_source=str(tmp_path / "b.npy"))
    train_teacher("moons", tmp_path / "t", overrides=TINY_NET + QUIET + ["train.iters=7"])  # trained on
    with pytest.raises(UserError, match="different settings \\(teacher_weights"):
        run_distill(teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]),
                    data_source=str(tmp_path / "a.npy"))


def test_a_run_is_not_relabelled_shorter_than_it_was_trained(tiny_teacher, tmp_path):
    """Asking a run trained to 6 iterations for 3 would save its 6-iteration weights under the settings of 3."""
    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=6"]))
    before = (tmp_path / "s" / "run.json").read_text()
    with pytest.raises(UserError, match="trained to iteration 6, past train.iters=3"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=3"]))
    assert (tmp_path / "s" / "run.json").read_text() == before


def test_a_ctrl_c_during_the_first_score_is_a_stop_request(tiny_teacher, tmp_path, monkeypatch):
    """The first preview and score ran before the Ctrl-C handler was installed: a Ctrl-C there killed the run with
    a bare KeyboardInterrupt, no checkpoint, and under a launcher the other process's traceback. Now it stops the
    run at iteration 0, checkpointed, and the same command resumes it."""
    import signal

    from distmatch.errors import Interrupted
    from distmatch.training import scoring

    measure = scoring.Scorer.measure

    def interrupted_measure(self, model):
        if not hasattr(self, "signalled"):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGINT)
        return measure(self, model)

    monkeypatch.setattr(scoring.Scorer, "measure", interrupted_measure)
    args = distill_args(["train.iters=6", "train.eval_every=3", "train.eval_n=32"])
    with pytest.raises(Interrupted, match="stopped at iteration 0 of 6; checkpoint saved"):
        run_distill(tiny_teacher, tmp_path / "s", steps=1, overrides=args)
    assert read_checkpoint_iteration(tmp_path / "s") == 0
    monkeypatch.setattr(scoring.Scorer, "measure", measure)
    run_distill(tiny_teacher, tmp_path / "s", steps=1, overrides=args)
    assert read_checkpoint_iteration(tmp_path / "s") == 6


def test_sigint_checkpoints_and_resume_matches(tiny_teacher, tmp_path):
    iters = 150
    cmd = [sys.executable, "-m", "distmatch.cli", "distill", "--teacher", str(tiny_teacher), "--steps", "1"]
    args = [a for o in distill_args([f"train.iters={iters}", "train.log_every=5"]) for a in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "int")] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "int" / "log.jsonl"
    deadline = time.time() + 120
    while (not log.exists() or not log.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Re-run the same command to resume" in err and "Traceback" not in err
    stopped_at = read_checkpoint_iteration(tmp_path / "int")
    assert 0 < stopped_at < iters
    done = subprocess.run(cmd + ["--out", str(tmp_path / "int")] + args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")] + args, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert_same_weights(tmp_path / "int", tmp_path / "ref")


def test_a_run_of_another_process_count_is_refused_before_any_note(tmp_path, capsys):
    """Resumed, or finished and grown, with another number of processes: one line, and no note first on a longer
    run that the refusal then does not make; a finished run re-runs with any number."""
    from types import SimpleNamespace

    from distmatch.training.guards import check_resumable

    def cfg(iters):
        return {"config": {"train": {"iters": iters}}}

    acc = SimpleNamespace(num_processes=1, is_main_process=True)
    for it, before, after, what in ((3, 6, 6, "resume it"), (6, 6, 8, "grow a finished run")):
        with pytest.raises(UserError, match=f"checkpointed with 2 processes; {what} with the same number"):
            check_resumable(tmp_path, {"iteration": it, "world_size": 2, "config": cfg(before)}, cfg(after), acc)
        assert "note" not in capsys.readouterr().err
    assert check_resumable(tmp_path, {"iteration": 6, "world_size": 2, "config": cfg(6)}, cfg(6), acc)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ckpt.save_tensors(path, {"a": torch.ones(3)}, {"iteration": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        ckpt.save_tensors(path, {"a": torch.zeros(3)}, {"iteration": 2})
    monkeypatch.undo()
    tensors, meta = ckpt.load_tensors(path)
    assert torch.equal(tensors["a"], torch.ones(3)) and meta["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize("method", ["dmd2", "fdistill", "msd"])
def test_two_processes_keep_identical_weights(tiny_teacher, tmp_path, method):
    """DDP over gloo, launched the documented way (`accelerate launch --multi_gpu --num_processes 2` starts two CPU
    processes): gradients are averaged across ranks, so both end with the same weights although each drew its own
    data and noise; the command says it is done once, not once per process. fdistill: with its discriminator's
    own head and optimizer beside the critic; msd: two students, across its DM -> ADM boundary (a GAN head that
    the DM stage does not train)."""
    out = tmp_path / "ddp"
    args = distill_args(["train.iters=8" if method == "msd" else "train.iters=6", "train.ckpt_every=100"])
    if method != "dmd2":
        args = [a.replace("dmd2.", f"{method}.") for a in args]
    if method == "msd":
        tiny_teacher = train_teacher("8gaussians-labeled", tmp_path / "t",
                                     overrides=TINY_NET + QUIET + ["train.iters=30", "train.batch_size=128"])
        args.append("msd.students=2")
    if method == "dmd2":  # scored on the main process while the other waits (train.eval_every)
        args += ["train.eval_every=3", "train.eval_n=100"]
    port = {"dmd2": "29533", "fdistill": "29535", "msd": "29536"}[method]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           str(Path(__file__).parent / "ddp_worker.py"), str(tiny_teacher), str(out), method, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("student ready in") == 1, done.stdout
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    tensors, meta = ckpt.load_tensors(out / ckpt.CHECKPOINT)
    assert meta["world_size"] == 2
    assert not torch.equal(tensors["rng/rank0"], tensors["rng/rank1"])  # the ranks really drew different noise
    if method == "dmd2":  # finished, re-run by one process: nothing changes (it was refused as another count)
        scores = json.loads((out / "scores.json").read_text())["scores"]
        assert [s["it"] for s in scores] == [0, 3, 6] and done.stderr.count("best swd") == 1, done.stderr[-2000:]
        model = (out / ckpt.MODEL).read_bytes()
        run_distill(tiny_teacher, out, method=method, steps=2, overrides=args)
        assert (out / ckpt.MODEL).read_bytes() == model


def test_a_signal_that_lands_while_the_processes_agree_is_kept_for_the_next_step():
    """Under DDP every step starts with the processes agreeing whether to stop; a SIGTERM that lands while one of
    them waits for that agreement stops them all at the next step (the agreement overwrote it: the run went on to
    the end, or the launcher killed it)."""
    import signal

    from distmatch.training.trainer import StopRequest

    stop = StopRequest()

    class Waiting:  # two processes; the signal lands during the reduction, after this one's flag (0) was sent
        num_processes, device = 2, "cpu"

        def reduce(self, flag, reduction):
            if not stop.requested:
                stop._handler(signal.SIGTERM, None)
            return flag.clone()

    assert stop.agreed(Waiting()) is False and stop.agreed(Waiting()) is True


def launch_two(worker: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
           str(Path(__file__).parent / worker), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_a_signal_to_one_process_stops_both_at_one_step_and_differing_runs_are_refused(tiny_teacher, tmp_path):
    """Ctrl-C reaching one process of two: both stop at the same step with a checkpoint (they used to wait for
    each other at different steps, forever); a teacher that differs between the processes is refused."""
    out = tmp_path / "stop"
    done = launch_two("ddp_stop_worker.py", "stop", str(tiny_teacher), str(out),
                      *distill_args(["train.iters=40", "train.ckpt_every=100"]))
    assert "stopped at iteration 3 of 40; checkpoint saved" in done.stderr, done.stderr[-2000:]
    assert read_checkpoint_iteration(out) == 3
    done = launch_two("ddp_stop_worker.py", "differ", str(tiny_teacher), str(tmp_path / "differ"))
    assert done.stdout.count("refused: the processes were given different runs") == 2, done.stdout + done.stderr[-999:]
    # accelerate's state made by the script first (one process on CPUs): each would train alone into one folder
    done = launch_two("ddp_stop_worker.py", "early", str(tiny_teacher), str(tmp_path / "early"))
    assert done.stdout.count("refused: launched as 2 processes") == 2, done.stdout + done.stderr[-999:]


def test_two_processes_share_the_making_of_the_teachers_pairs(tiny_teacher, tmp_path):
    """Each process solves the ODE for its share of dmd's pairs (chunks of 1024) and both hold them all: the pairs
    are those one process makes, bitwise (every process used to make every pair)."""
    args = QUIET + ["train.batch_size=32", "train.iters=2", "dmd.pairs=2100"]
    done = launch_two("ddp_pairs_worker.py", str(tiny_teacher), str(tmp_path / "two"), *args)
    assert done.returncode == 0, done.stderr[-2000:]
    solved = [int((tmp_path / "two" / f"solved{r}.txt").read_text()) for r in (0, 1)]
    assert solved == [1024 + 52, 1024], solved  # chunks 0 and 2 on the first process, chunk 1 on the second
    run_distill(tiny_teacher, tmp_path / "one", method="dmd", steps=2, overrides=args)
    two, _ = ckpt.load_tensors(tmp_path / "two" / pairs.PAIRS_FILE)
    one, _ = ckpt.load_tensors(tmp_path / "one" / pairs.PAIRS_FILE)
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)


def test_divergence_stops_with_one_line(tiny_teacher, tmp_path, monkeypatch):
    """A NaN loss is never logged away silently: the run stops, naming the iteration and the loss."""
    import distmatch.methods.common as common

    monkeypatch.setattr(common, "critic_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match=r"diverged at iteration 1 \(loss_critic = nan\); nothing was saved"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=5", "dmd2.ode_init=0"]))
    with pytest.raises(UserError, match="train.lr"):
        run_distill(tiny_teacher, tmp_path / "s2", overrides=distill_args(["train.lr=nan"]))


def test_weights_gone_non_finite_are_not_saved_over_the_last_checkpoint(tiny_teacher, tmp_path, monkeypatch):
    """A NaN the losses hide (the DM gradient's nan_to_num turns it into 0) still stops the run at the next
    checkpoint: the one before it is kept and no model is written ("student ready" on NaN weights before)."""
    import distmatch.methods.common as common

    step = common.StudentCriticMethod.step

    def poisoned(self, batch, it):
        if it == 9:  # after the checkpoint of iteration 7
            with torch.no_grad():
                next(self.critic.parameters()).fill_(float("nan"))
        return step(self, batch, it)

    monkeypatch.setattr(common.StudentCriticMethod, "step", poisoned)
    monkeypatch.setattr(common, "critic_loss", lambda *a, **k: torch.zeros((), requires_grad=True))
    with pytest.raises(UserError, match=r"diverged by iteration 14 \(critic\..* is not finite\); the checkpoint "
                                        r"of iteration 7 .* is kept"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=20", "dmd2.gan=false"]))
    assert read_checkpoint_iteration(tmp_path / "s") == 7 and not (tmp_path / "s" / ckpt.MODEL).exists()


def test_a_launchers_precision_or_accumulation_is_refused_not_ignored(tiny_teacher, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` trained in fp32 and recorded fp32 (the same weights as a plain
    run); the run's own train.precision decides, so a launcher asking otherwise is refused."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(UserError, match="--mixed_precision bf16, but distmatch's precision is the setting"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=2"]))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(UserError, match="does not accumulate gradients"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=2"]))
    assert not (tmp_path / "s").exists()


def test_first_only_trains_the_first_step_alone_for_its_share(tiny_teacher, tmp_path, monkeypatch):
    from distmatch.methods.student import FewStepStudent

    seen = []
    original = FewStepStudent.pick_step

    def spy(self, shared, n):
        steps = original(self, shared, n)
        seen.append(int(steps.max()))
        return steps

    monkeypatch.setattr(FewStepStudent, "pick_step", spy)
    run_distill(tiny_teacher, tmp_path / "s", steps=2,
                overrides=distill_args(["train.iters=8", "student.first_only=0.5", "dmd2.ode_init=0"]))
    half = len(seen) // 2  # the same number of draws (critic + student turns) in each half of the run
    assert max(seen[:half]) == 0 and max(seen[half:]) == 1, seen


def test_cooldown_lowers_the_rate_linearly_to_zero_over_the_last_fraction():
    from distmatch.training.trainer import TrainConfig, lr_factor

    cfg = TrainConfig(iters=100, cooldown=0.25)
    assert [lr_factor(it, cfg) for it in (0, 50, 75)] == [1.0, 1.0, 1.0]
    assert lr_factor(80, cfg) == pytest.approx(0.8)
    assert lr_factor(99, cfg) == pytest.approx(0.04)
    assert lr_factor(120, cfg) == 0.0
    assert lr_factor(99, TrainConfig(iters=100)) == 1.0
    with pytest.raises(UserError, match="train.cooldown"):
        TrainConfig(cooldown=1.5).validate()


def test_ema_warmup_follows_early_weights_then_keeps_its_horizon():
    from distmatch.training.ema import ema_copy, ema_decay, ema_update

    assert ema_decay(0.995, 0, True) == pytest.approx(0.1)
    assert ema_decay(0.995, 10_000, True) == 0.995
    assert ema_decay(0.995, 0, False) == 0.995
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = ema_copy(net)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for n in range(20):  # without warm-up the average would still sit at 1 - 0.995**20 = 0.095
        ema_update(ema, net, ema_decay(0.995, n, True))
    assert ema.weight.item() > 0.9


def test_a_run_takes_the_threads_its_launcher_hands_it(tmp_path, monkeypatch):
    """compare hands a run the threads of runs that finished; a missing or garbled file changes nothing."""
    before = torch.get_num_threads()
    budget = tmp_path / "threads"
    monkeypatch.setenv(THREADS_FILE_ENV, str(budget))
    try:
        follow_thread_budget()  # no file yet
        assert torch.get_num_threads() == before
        budget.write_text("not a number")
        follow_thread_budget()
        assert torch.get_num_threads() == before
        budget.write_text(str(before + 1))
        follow_thread_budget()
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_tensorboard_keeps_the_step_a_run_resumes_from(tiny_teacher, tmp_path):
    """A run grown from 10 to 20 iterations: TensorBoard holds the scalars and the preview of step 10 as log.jsonl
    does (it purged the step resumed from, written before the resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import time

    for iters in (10, 20):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args([f"train.iters={iters}", "train.log_every=5",
                                                                          "train.ckpt_every=10", "train.preview=true"]))
        time.sleep(1.1)  # TensorBoard orders event files by name, which starts with the second each was made in
    events = EventAccumulator(str(tmp_path / "s" / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged = [json.loads(line)["it"] for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("loss_critic")] == logged == [5, 10, 15, 20]
    assert [e.step for e in events.Images("samples")] == [0, 10, 20]


def test_a_second_run_into_a_folder_being_written_is_refused(tiny_teacher, tmp_path):
    """Two commands writing one --out interleaved their logs and checkpoints (the second with other settings, before
    the first had a checkpoint to compare with): while one holds the folder, the other is refused in one line."""
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first command's process holds it
    try:
        with pytest.raises(UserError, match="another distmatch process is writing"):
            run_distill(tiny_teacher, out, overrides=distill_args(["train.iters=4"]))
    finally:
        os.close(fd)
    run_distill(tiny_teacher, out, overrides=distill_args(["train.iters=4"]))  # released: it runs
    assert (out / ckpt.MODEL).is_file()


# ------------------------------------------------------------------------------ scores while training, best/
def scored_args(extra=()):
    given = {item.split("=", 1)[0] for item in extra}
    base = [item for item in ("dmd2.ode_init=0", "train.iters=20", "train.eval_every=5", "train.eval_n=200")
            if item.split("=", 1)[0] not in given]
    return distill_args([*base, *extra])


def test_scores_keep_the_best_student_and_leave_training_alone(tiny_teacher, tmp_path, monkeypatch, capsys):
    """The student scored best (at iteration 10 here: the metric is overridden) is kept in best/, as a run of 10
    iterations would end; the run's own model is its last, the same as without scores."""
    from distmatch.models import load_model
    from distmatch.training.scoring import Scorer

    table = {0: 5.0, 5: 4.0, 10: 1.0, 15: 3.0, 20: 2.0}
    measure = Scorer.measure

    def slow_measure(self, model):  # a second per score, which the run's training clock leaves out
        time.sleep(1.0)
        return {**measure(self, model), "swd": table[len(self.scores) * 5]}

    monkeypatch.setattr(Scorer, "measure", slow_measure)
    run_distill(tiny_teacher, tmp_path / "scored", steps=2, overrides=scored_args())
    assert "best swd 1 at iteration 10 of 20" in capsys.readouterr().err
    run_distill(tiny_teacher, tmp_path / "plain", steps=2, overrides=distill_args(["dmd2.ode_init=0",
                                                                                     "train.iters=20"]))
    run_distill(tiny_teacher, tmp_path / "ten", steps=2, overrides=distill_args(["dmd2.ode_init=0", "train.iters=10"]))
    assert_same_weights(tmp_path / "scored", tmp_path / "plain")
    clock = {run: read_log(tmp_path / run)[-1]["time"] for run in ("scored", "plain")}
    assert clock["scored"] < clock["plain"] + 2.5, clock  # five seconds of scores are not training time
    assert_same_weights(tmp_path / "scored" / "best", tmp_path / "ten")
    scores = json.loads((tmp_path / "scored" / "scores.json").read_text())
    assert [s["it"] for s in scores["scores"]] == [0, 5, 10, 15, 20] and scores["best"]["it"] == 10
    assert all(s["mmd"] > 0 for s in scores["scores"])  # the measured metrics are kept beside the one ranked
    best = load_model(tmp_path / "scored" / "best")
    assert best.config["best"] == {"it": 10, "swd": 1.0, "n": 200} and best.sample(4)[0].shape == (4, 2)


def test_a_scored_run_resumed_keeps_its_scores_and_best(tiny_teacher, tmp_path, stop_before):
    """Stopped at iteration 12 and resumed: the same scores and best/ as the run that was not stopped; a score
    from past the checkpoint (a run killed before its next one, or scored on another schedule) is dropped."""
    from distmatch.errors import Interrupted

    run_distill(tiny_teacher, tmp_path / "full", steps=2, overrides=scored_args())
    stop_before(12)
    with pytest.raises(Interrupted):
        run_distill(tiny_teacher, tmp_path / "half", steps=2, overrides=scored_args())
    stop_before(None)
    path = tmp_path / "half" / "scores.json"
    stored = json.loads(path.read_text())
    assert [s["it"] for s in stored["scores"]] == [0, 5, 10]
    stored["scores"].append({"it": 13, "swd": -1.0})  # past the checkpoint (another eval_every): must not stay
    path.write_text(json.dumps(stored))
    run_distill(tiny_teacher, tmp_path / "half", steps=2, overrides=scored_args())
    full, half = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("full", "half"))
    assert half == full
    assert_same_weights(tmp_path / "full" / "best", tmp_path / "half" / "best")


def test_scores_of_another_size_start_over_when_resumed_and_say_so(tiny_teacher, tmp_path, capsys):
    run_distill(tiny_teacher, tmp_path / "s", steps=2, overrides=scored_args(["train.iters=10"]))
    capsys.readouterr()
    run_distill(tiny_teacher, tmp_path / "s", steps=2, overrides=scored_args(["train.eval_n=100"]))
    assert "are swd of n=200, not swd of n=100" in capsys.readouterr().err
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert scores["n"] == 100 and [s["it"] for s in scores["scores"]] == [15, 20]


def test_scores_are_refused_where_they_cannot_be_made(tiny_teacher, tmp_path):
    """Too few samples, an exact teacher (no network trained), a teacher without data: one line each, before any
    training."""
    import distmatch

    with pytest.raises(UserError, match="train.eval_n"):
        run_distill(tiny_teacher, tmp_path / "s", steps=1, overrides=scored_args(["train.eval_n=5"]))
    with pytest.raises(UserError, match="exact mixture itself"):
        train_teacher("8gaussians", tmp_path / "t", overrides=QUIET + ["train.eval_every=5"])
    class Net(torch.nn.Module):
        def forward(self, x, sigma):
            return x / (1 + sigma[:, None] ** 2)

    net = distmatch.wrap_teacher(Net(), sample_shape=(2,))
    with pytest.raises(UserError, match="eval_every scores the student against real data"):
        distmatch.distill(net, tmp_path / "u", steps=1, settings={"dmd2.gan": False, "train.eval_every": 5})
    assert not (tmp_path / "u").exists()


def test_a_damaged_checkpoint_of_a_finished_run_says_its_model_is_still_read(tiny_teacher, tmp_path):
    """It advised deleting the checkpoint and training from the start, though the finished model was intact."""
    from distmatch.models import load_model

    run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))
    path = tmp_path / "s" / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="the checkpoint is damaged: the run's model .* sample, evaluate and export"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))
    assert load_model(tmp_path / "s").sample(3)[0].shape == (3, 2)
    (tmp_path / "s" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="the checkpoint is damaged: delete it to train this run again"):
        run_distill(tiny_teacher, tmp_path / "s", overrides=distill_args(["train.iters=4"]))


@pytest.mark.parametrize("every", [0, 5])
def test_processes_wait_for_a_score_longer_than_nccls_default(every):
    """While the main process scores (train.eval_every), the others wait at a collective: two hours, not NCCL's
    ten minutes; without scores accelerate's default stands."""
    import datetime

    from distmatch.training.trainer import TrainConfig, make_accelerator

    acc = make_accelerator(TrainConfig(eval_every=every))
    handler = acc.init_handler
    assert (handler.timeout if handler else None) == (datetime.timedelta(hours=2) if every else None)


def test_sharded_training_is_refused_in_one_line():
    """FSDP and DeepSpeed shard the networks' weights, and distmatch reads whole networks on every process (the EMA,
    checkpoints, the student): accelerate configured for them is refused; DDP on GPUs or CPUs is what runs."""
    from accelerate.utils import DistributedType

    from distmatch.training.trainer import check_replicated

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(UserError, match=f"configured for {kind.value}, which shards.*launch with DDP"):
            check_replicated(kind)
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_replicated(kind)


def test_a_deepspeed_launch_is_refused_before_accelerate_looks_for_deepspeed(monkeypatch):
    """accelerate launch --use_deepspeed sets ACCELERATE_USE_DEEPSPEED; without deepspeed installed accelerate's
    own ImportError came first, a traceback."""
    from distmatch.training.trainer import TrainConfig, make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="configured for DEEPSPEED"):
        make_accelerator(TrainConfig())
