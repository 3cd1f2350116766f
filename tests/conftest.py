import os
from pathlib import Path

import pytest
import torch

# Two pytest workers on two cores: one torch thread each, or OpenMP oversubscription slows everything many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Feature-network caches go to a per-session temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("DISTMATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def quick_feature_net(monkeypatch):
    """The in-domain feature network fitted in 2 steps, not its 500: for tests of what is built around it."""
    from distmatch.eval import features

    fit = features.train_feature_net
    monkeypatch.setattr(features, "train_feature_net",
                        lambda x, labels, seed=0, hparams=None, progress=True:
                        fit(x, labels, seed, {**(hparams or {}), "steps": 2}, progress))


@pytest.fixture
def short_mixture_run(tmp_path):
    """Distil a small network fitted to the exact 8-Gaussian teacher with one method, and score the student against
    the held-out data beside the teacher at the student's step count and at its recommended steps (3000 samples)."""
    from types import SimpleNamespace

    from distmatch.data import load_data
    from distmatch.methods import run_distill
    from distmatch.eval.vectors import mode_stats, sliced_wasserstein
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    def run(method: str, overrides: list[str]) -> SimpleNamespace:
        quiet = ["train.progress=false"]
        net = ["network.width=96", "network.depth=2", "network.fourier=32"]
        teacher_dir = train_teacher("8gaussians", tmp_path / "t",
                                    overrides=net + quiet + ["train.iters=600", "train.batch_size=512"])
        student_dir = run_distill(teacher_dir, tmp_path / "s", method=method, overrides=quiet + overrides)
        teacher, student = load_model(teacher_dir), load_model(student_dir)
        ref = load_data("8gaussians", split="test", spec=teacher.spec)
        xs, _ = student.sample(3000, seed=1)
        xk, _ = teacher.sample(3000, steps=student.config["steps"], seed=1)
        xt, _ = teacher.sample(3000, seed=1)
        student_swd, same_steps_swd, teacher_swd = (sliced_wasserstein(x, ref.x) for x in (xs, xk, xt))
        return SimpleNamespace(dir=Path(student_dir), model=student, swd=student_swd, same_steps_swd=same_steps_swd,
                               teacher_swd=teacher_swd, stats=mode_stats(xs, ref.mixture))

    return run


@pytest.fixture
def stop_before(monkeypatch):
    """stop_before(n): the trainer's next run stops before iteration n, as a Ctrl-C there would (its loop asks for a
    stop request once before each step); undone by stop_before(None)."""
    from distmatch.training import trainer

    def arm(n):
        if n is None:
            monkeypatch.setattr(trainer, "StopRequest", original)
            return

        class StopAt(original):
            checks = 0

            @property
            def requested(self):
                StopAt.checks += 1
                return StopAt.checks > n

            @requested.setter
            def requested(self, value):
                pass

        monkeypatch.setattr(trainer, "StopRequest", StopAt)

    original = trainer.StopRequest
    return arm
