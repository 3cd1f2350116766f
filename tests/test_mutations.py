"""Each method, as published, passes a short quality check on the exact 8-Gaussian teacher, and fails it when its
machinery is broken on purpose: the quality thresholds are shown to bite.

Mutations (monkeypatched into the shared code every method runs through):
  flip    the distribution-matching push points the wrong way (x̂_real and x̂_fake swapped)
  frozen  the critic (fake score, and its GAN head) is never updated
  leak    the critic learns from the student's samples without detaching them, so the gradient of the critic's
          loss reaches the student through its samples and the student's optimizer steps on it
"""
from types import SimpleNamespace

import pytest
import torch

from distmatch.data import load_data
from distmatch.eval.vectors import mode_stats, sliced_wasserstein
from distmatch.methods import common, fdistill, msd, run_distill, tdm
from distmatch.models import load_model
from distmatch.teachers.train import train_teacher

QUIET = ["train.progress=false"]
SHORT = ["train.batch_size=256", "train.lr=1e-3"]
# Short runs of each method's published losses on the exact 8-Gaussian teacher (msd: its labelled twin, where each
# class is one component): only the budget (iterations, batch, rate, pairs, students) is set for CI.
RUNS = {
    "dmd2": ("dmd2", 1, ["train.iters=1000", *SHORT]),
    "dmd": ("dmd", 1, ["train.iters=1000", *SHORT, "dmd.pairs=2048"]),
    # DMD's regression alone passes the check within this budget (a frozen critic: SWD 0.035 / 0.022 / 0.025 over
    # three training seeds at 2000 iterations, against 0.022 / 0.021 / 0.021), so the critic is tested on DMD's
    # distribution-matching half
    "dmd, DM half": ("dmd", 1, ["train.iters=1000", *SHORT, "dmd.regression_weight=0"]),
    # f-distill's discriminator on the frozen teacher's features (FastGen) needs 2000: at 1000 it keeps 7 of 8 modes
    "fdistill": ("fdistill", 1, ["train.iters=2000", *SHORT]),
    "tdm": ("tdm", 4, ["train.iters=600", *SHORT]),
    "msd": ("msd", 1, ["train.iters=1500", "train.batch_size=256", "train.lr=3e-4", "msd.students=2"]),
}
# tdm's sign-per-element push keeps every mode even with a critic that leaks into the student (SWD 0.066, 23% of the
# samples off the modes, against 0.026 and 4% as published): its check also bounds the share off the modes.
OFF_MODE_MAX = {"tdm": 0.12}
MUTATIONS = {"dmd2": ("flip", "frozen", "leak"), "dmd": ("flip", "leak"), "dmd, DM half": ("frozen",),
             "fdistill": ("flip", "frozen", "leak"), "tdm": ("flip", "frozen", "leak"),
             "msd": ("flip", "frozen", "leak")}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    net = ["network.width=64", "network.depth=2", "network.fourier=32"]
    root = tmp_path_factory.mktemp("teachers")
    return {data: train_teacher(data, root / data, overrides=net + QUIET + ["train.iters=600", "train.batch_size=512"])
            for data in ("8gaussians", "8gaussians-labeled")}


def flip(monkeypatch):
    swapped = common.dm_gradient

    def dm_gradient(x, x0_real, x0_fake, *args, **kwargs):
        return swapped(x, x0_fake, x0_real, *args, **kwargs)

    monkeypatch.setattr(common, "dm_gradient", dm_gradient)
    monkeypatch.setattr(fdistill, "dm_gradient", dm_gradient)
    loss = tdm.tdm_generator_loss
    monkeypatch.setattr(tdm, "tdm_generator_loss", lambda x0, real, fake, *a, **k: loss(x0, fake, real, *a, **k))


def frozen(monkeypatch):
    monkeypatch.setattr(common.DistributionMatching, "fit_critic", lambda self, *a, **k: {})
    monkeypatch.setattr(common.StudentCriticMethod, "update_critic", lambda self, loss, clip=True: None)


def leak(monkeypatch):
    def critic_samples(self, gen, cond, steps):
        with self.ctx.autocast():
            return self.student.sample(gen, cond, steps, grad=True).float()

    def stepping_the_student(critic_update):
        def update(self, *args, **kwargs):
            self.opt_g.zero_grad(set_to_none=True)
            logs = critic_update(self, *args, **kwargs)
            self.opt_g.step()  # on the gradient the critic's loss sent through the samples
            return logs
        return update

    monkeypatch.setattr(common.DistributionMatching, "critic_samples", critic_samples)
    monkeypatch.setattr(common.StudentCriticMethod, "critic_step",
                        stepping_the_student(common.StudentCriticMethod.critic_step))
    rollout = tdm.TDM.rollout.__wrapped__  # tdm's critic learns the outputs of its roll-out, now with their graph

    def rollout_with_graph(self, *args, **kwargs):
        inputs, outputs = rollout(self, *args, **kwargs)
        return inputs.detach(), outputs

    monkeypatch.setattr(tdm.TDM, "rollout", rollout_with_graph)
    monkeypatch.setattr(tdm.TDM, "critic_step", stepping_the_student(tdm.TDM.critic_step))

    def msd_critic_step(self, i, cond, *args):  # msd: student i's own optimizer
        self.opt_g[i].zero_grad(set_to_none=True)
        logs = msd_update(self, i, cond, *args)
        self.opt_g[i].step()
        return logs

    msd_update = msd.MSD.critic_step
    monkeypatch.setattr(msd.MSD, "critic_step", msd_critic_step)


def short_run(teachers, tmp_path, name: str) -> SimpleNamespace:
    method, steps, settings = RUNS[name]
    data = "8gaussians-labeled" if method == "msd" else "8gaussians"
    run = run_distill(teachers[data], tmp_path / "s", method=method, steps=steps, overrides=QUIET + settings)
    student = load_model(run)
    ref = load_data(data, split="test", spec=student.spec)
    x, labels = student.sample(3000, seed=1)
    r = SimpleNamespace(swd=sliced_wasserstein(x, ref.x), **mode_stats(x, ref.mixture))
    if labels is not None:  # each class must land on its own component
        nearest = torch.cdist(x.double(), ref.mixture.means.double()).argmin(1)  # class c is component c
        r.on_own_mode = nearest.eq(labels).double().mean().item()
        r.spread = torch.stack([x[labels == c].std(0) / ref.x[ref.labels == c].std(0)  # each class's width
                                for c in labels.unique()]).mean().item()
    return r


def passes(r, name: str = "") -> bool:
    """The quality check: every mode, SWD under 0.12 (the teacher's 1-step Euler is at 0.45 and its 40-step Heun at
    0.012), and for class-conditional students 90% of the samples on their class's own mode, each class as wide
    as its data within a factor 2."""
    per_class = getattr(r, "on_own_mode", 1.0) > 0.9 and 0.5 < getattr(r, "spread", 1.0) < 2.0
    off_mode = r.off_mode < OFF_MODE_MAX.get(name, 1.0)
    return r.modes_covered == 1.0 and r.swd < 0.12 and per_class and off_mode


@pytest.mark.parametrize("name", list(RUNS))
def test_published_method_passes_the_quality_check(teachers, tmp_path, name):
    r = short_run(teachers, tmp_path, name)
    assert passes(r, name), r


@pytest.mark.parametrize("name,mutation", [(n, m) for n, ms in MUTATIONS.items() for m in ms])
def test_broken_method_fails_the_quality_check(teachers, tmp_path, monkeypatch, name, mutation):
    {"flip": flip, "frozen": frozen, "leak": leak}[mutation](monkeypatch)
    r = short_run(teachers, tmp_path, name)
    assert not passes(r, name), r
