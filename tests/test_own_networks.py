"""Networks a user wrote, wrapped with wrap_teacher: tied weights, where the GAN reads, outputs of the wrong
shape, train mode, parameters kept fixed, and networks distmatch cannot train (found by a probe as such a user)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distmatch
from distmatch.errors import UserError

QUICK = {"train.iters": 2, "train.batch_size": 8}
DATA = np.random.default_rng(0).normal(scale=0.5, size=(64, 2)).astype(np.float32)
AC = torch.linspace(0.999, 0.01, 1000)


class TwoBranch(nn.Module):
    """An ε-network whose time branch runs after its sample branch; `tied`: one layer's weight is another's."""

    def __init__(self, tied: bool = False, fixed: bool = False, norm: bool = False):
        super().__init__()
        self.xin = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 16))
        self.tin = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 16))
        self.mix = nn.Linear(16, 16)
        if tied:
            self.mix.weight = self.xin[2].weight
        self.norm = nn.Sequential(nn.BatchNorm1d(16), nn.Dropout(0.5)) if norm else None
        self.head = nn.Linear(16, 2)
        if fixed:  # a constant the network keeps, as random Fourier features are
            self.B = nn.Parameter(torch.randn(2, 2), requires_grad=False)

    def forward(self, x, t):
        x = x @ self.B if hasattr(self, "B") else x
        h = F.silu(self.mix(self.xin(x)) + self.tin(t[:, None] / 1000))
        return self.head(self.norm(h) if self.norm is not None else h)


def test_tied_weights_are_saved_and_reload(tmp_path):
    """One tensor under two names cannot be written by safetensors as it is (it raised at the first checkpoint):
    the run saves, resumes and reloads to the same samples."""
    torch.manual_seed(0)
    teacher = distmatch.wrap_teacher(TwoBranch(tied=True), sample_shape=(2,), alphas_cumprod=AC)
    settings = {**QUICK, "train.ckpt_every": 1}
    student = distmatch.distill(teacher, tmp_path / "s", data=DATA, settings=settings, progress=False)
    student = distmatch.distill(teacher, tmp_path / "s", data=DATA, settings={**settings, "train.iters": 3},
                                progress=False)
    again = distmatch.load(tmp_path / "s", network=TwoBranch(tied=True))
    np.testing.assert_array_equal(student.sample(8, seed=1), again.sample(8, seed=1))


def test_gan_features_must_see_the_sample(tmp_path):
    """features="auto" passes over a time embedding (the same row for every sample) for the last hidden layer that
    sees x; one named that does not see x, or whose output a GAN head cannot read, is refused in one line."""
    torch.manual_seed(0)
    teacher = distmatch.wrap_teacher(TwoBranch(), sample_shape=(2,), alphas_cumprod=AC)
    assert teacher.loaded.config["network"]["features"] == "mix"
    distmatch.distill(teacher, tmp_path / "s", data=DATA, settings=QUICK, progress=False)  # dmd2 with its GAN
    with pytest.raises(UserError, match="'tin' gives the same features for every sample"):
        distmatch.wrap_teacher(TwoBranch(), sample_shape=(2,), alphas_cumprod=AC, features="tin")

    class Tokens(TwoBranch):  # a sub-module giving (B, T, C) tokens that form no square grid
        def __init__(self):
            super().__init__()
            self.tokens = nn.Linear(1, 3)

        def forward(self, x, t):
            self.tokens(x[..., None])
            return super().forward(x, t)

    with pytest.raises(UserError, match=r"'tokens' gives features of shape \(2, 2, 3\) .* a row \(B, F\) or a map"):
        distmatch.wrap_teacher(Tokens(), sample_shape=(2,), alphas_cumprod=AC, features="tokens")


@pytest.mark.parametrize("convention", [{"alphas_cumprod": AC}, {"flow": True}, {"prediction": "epsilon"}])
def test_a_prediction_that_only_broadcasts_is_refused(convention):
    """An ε, v or velocity network whose output has too few channels broadcast against x in silence (only x̂_0
    networks were checked); a flat (B·D,) output passed a probe at batch 1."""
    class OneChannel(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    with pytest.raises(UserError, match=r"prediction has shape \(2, 1, 8, 8\) for 2 samples of shape \(3, 8, 8\)"):
        distmatch.wrap_teacher(OneChannel(), sample_shape=(3, 8, 8), features=None, **convention)

    class Flat(TwoBranch):
        def forward(self, x, t):
            return super().forward(x, t).reshape(-1)

    with pytest.raises(UserError, match=r"prediction has shape \(4,\) for 2 samples of shape \(2,\)"):
        distmatch.wrap_teacher(Flat(), sample_shape=(2,), **convention)


def test_the_teacher_runs_in_eval_mode_and_keeps_its_fixed_parameters(tmp_path):
    """A network put back in train mode after wrapping is run in eval mode (its BatchNorm statistics stay as they
    were, its samples repeat); a parameter it keeps fixed (requires_grad False among trainable ones) stays fixed
    in the student it trains, where the rest move."""
    torch.manual_seed(0)
    net = TwoBranch(fixed=True, norm=True)
    teacher = distmatch.wrap_teacher(net, sample_shape=(2,), alphas_cumprod=AC)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    first = teacher.sample(16, seed=1)
    student = distmatch.distill(teacher, tmp_path / "s", data=DATA, settings={**QUICK, "train.iters": 6},
                                progress=False)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(teacher.sample(16, seed=1), first)
    weights = distmatch.load(tmp_path / "s", network=TwoBranch(fixed=True, norm=True)).loaded.denoiser.state_dict()
    moved = {k for k in ("B", "head.weight") if not torch.equal(weights[f"net.{k}"], before[k])}
    assert moved == {"head.weight"}, moved
    assert student.sample(4).shape == (4, 2)


def test_networks_distmatch_cannot_train_are_refused(tmp_path):
    """A network with no parameters (an analytic denoiser) samples, but cannot be distilled; a float64 one is
    refused as a half-precision one is, where it failed inside its first layer."""
    class Analytic(nn.Module):  # the exact denoiser of N(0, 0.5²)
        def forward(self, x, sigma):
            return x * 0.25 / (0.25 + sigma[:, None] ** 2)

    teacher = distmatch.wrap_teacher(Analytic(), sample_shape=(2,), features=None)
    assert teacher.sample(4).shape == (4, 2)
    with pytest.raises(UserError, match="the teacher's network has no parameters"):
        distmatch.distill(teacher, tmp_path / "s", data=DATA, settings={**QUICK, "dmd2.gan": False}, progress=False)
    with pytest.raises(UserError, match="parameters are torch.float64: .* pass net.float()"):
        distmatch.wrap_teacher(TwoBranch().double(), sample_shape=(2,), alphas_cumprod=AC)


def test_a_network_that_fails_between_its_ends_is_refused_when_wrapped():
    """NaN for t in (300, 700) only: the ends were checked, and distill later said "training diverged ... try a
    lower train.lr" of a teacher that was broken from the start."""
    class Gap(TwoBranch):
        def forward(self, x, t):
            out = super().forward(x, t)
            return torch.where(((t > 300) & (t < 700))[:, None], torch.nan, out)

    with pytest.raises(UserError, match=r"non-finite values at σ = \S+, one of the levels it was trained on"):
        distmatch.wrap_teacher(Gap(), sample_shape=(2,), alphas_cumprod=AC)


def test_data_far_from_a_sigma_space_networks_spread_are_said(tmp_path, capsys):
    """A σ-space network is wrapped for data of std sigma_data; data a thousand times wider were taken in silence."""
    class Denoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, sigma):
            return self.lin(torch.cat([x, sigma.log()[:, None]], 1))

    teacher = distmatch.wrap_teacher(Denoiser(), sample_shape=(2,), features=None)
    quick = {**QUICK, "train.iters": 1, "dmd2.gan": False}
    distmatch.distill(teacher, tmp_path / "a", data=DATA, settings=quick, progress=False)
    assert "warning" not in capsys.readouterr().err
    distmatch.distill(teacher, tmp_path / "b", data=DATA * 1000, settings=quick, progress=False)
    assert "have std 477, where the teacher was wrapped for data of spread sigma_data = 0.5" in capsys.readouterr().err
