"""f-distill: each divergence's weight is r² f''(r), the per-bin ratio normaliser, a short run on the exact mixture,
and resuming."""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distmatch import checkpoint as ckpt
from distmatch.methods import run_distill
from distmatch.methods.fdistill import RatioBins, f_weight, teacher_time
from distmatch.methods.losses import F_DIVERGENCES, f_divergence_weight
from distmatch.errors import UserError
from distmatch.teachers.train import train_teacher

QUIET = ["train.progress=false"]

# Each divergence's generator f (f(1) = 0, convex), written out independently of the library's h table.
F = {
    "rkl": lambda r: -torch.log(r),
    "kl": lambda r: r * torch.log(r),
    "js": lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
    "hellinger": lambda r: (torch.sqrt(r) - 1) ** 2,
    "jeffreys": lambda r: (r - 1) * torch.log(r),
    "neyman": lambda r: (1 - r) ** 2 / r,
    # f'' = 1 / (r² (1 + r)) = 1/r² - 1/r + 1/(1+r), integrated twice (up to terms linear in r):
    "softened-rkl": lambda r: (r + 1) * torch.log((r + 1) / (2 * r)),
}


def second_derivative(f, r):
    r = r.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(f(r).sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    return d2


@pytest.mark.parametrize("divergence", sorted(F))
def test_weight_is_r_squared_f_second_derivative(divergence):
    """h(r) ∝ r² f''(r) with one positive constant for all r (h is normalised by its mean, so constants cancel)."""
    r = torch.tensor([0.1, 0.3, 0.7, 1.0, 1.5, 3.0, 8.0, 20.0], dtype=torch.float64)
    assert F[divergence](torch.tensor(1.0, dtype=torch.float64)).abs() < 1e-12  # f(1) = 0
    expected = r ** 2 * second_derivative(F[divergence], r)
    ratio = f_divergence_weight(r, divergence).expand_as(r) / expected
    assert (ratio > 0).all()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-9), ratio
    assert set(F) == set(F_DIVERGENCES)


def test_weight_is_normalised_by_its_batch_mean():
    r = torch.tensor([0.2, 1.0, 4.0, 10.0])
    for divergence in F:
        h = f_weight(r, divergence)
        assert math.isclose(h.mean().item(), 1.0, rel_tol=1e-5), divergence
    assert torch.allclose(f_weight(r, "kl"), r / r.mean(), rtol=1e-5)


def test_ratio_bins_track_each_bins_mean_and_survive_save_load(tmp_path):
    bins = RatioBins(bins=10, momentum=0.5, t_range=(0, 1000))
    index = torch.tensor([0, 50, 99, 500, 999, 999])          # bins 0, 0, 0, 5, 9, 9
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.5, 1.5])
    out = bins.normalise(r, index)
    expected = torch.ones(10)
    expected[0], expected[5], expected[9] = 0.5 + 0.5 * 2.0, 0.5 + 0.5 * 5.0, 0.5 + 0.5 * 1.0
    assert torch.allclose(bins.mean, expected)  # unseen bins keep their mean
    assert torch.allclose(out, r / expected[[0, 0, 0, 5, 9, 9]], rtol=1e-5)
    bins.normalise(torch.tensor([4.0]), torch.tensor([510]))
    assert math.isclose(bins.mean[5].item(), 0.5 * 3.0 + 0.5 * 4.0)
    path = tmp_path / "c.safetensors"
    ckpt.save_tensors(path, ckpt.module_to_tensors("ratio_bins", bins))
    fresh = RatioBins(bins=10, momentum=0.5, t_range=(0, 1000))
    fresh.load_state_dict(ckpt.module_from_tensors("ratio_bins", ckpt.load_tensors(path)[0]))
    assert torch.equal(fresh.mean, bins.mean)


def test_ratio_bins_are_of_equal_width_in_the_teachers_own_time():
    """As FastGen bins t evenly over [min_t, max_t]: in σ for an EDM teacher (the first 640 of the 1000 Karras
    levels, σ < 8, share bin 0), in the timestep for a DDPM one, in s for a flow one."""
    from distmatch.schedules import karras_grid_1000

    def bins_of(idx, sigma, grid, kind):
        ends = teacher_time(torch.tensor([0, len(grid) - 1]), grid[[0, -1]], kind)
        return RatioBins(10, 0.5, tuple(ends.tolist())).bin_of(teacher_time(idx, sigma, kind)).tolist()

    karras = karras_grid_1000()
    idx = torch.tensor([0, 639, 640, 999])
    assert bins_of(idx, karras[idx], karras, "ve") == [0, 0, 1, 9]
    ddpm = torch.linspace(0.01, 157.0, 1000, dtype=torch.float64)  # one level per timestep, whatever their σ
    assert bins_of(idx, ddpm[idx], ddpm, "vp") == [0, 6, 6, 9]
    s = torch.linspace(0.001, 0.999, 1000, dtype=torch.float64)
    flow = s / (1 - s)
    assert bins_of(idx, flow[idx], flow, "flow") == [0, 6, 6, 9]


def test_options_are_checked():
    from distmatch.methods.fdistill import Options

    with pytest.raises(UserError, match="divergence"):
        Options(divergence="tv").validate()
    with pytest.raises(UserError, match="GAN"):
        Options(gan_weight_g=0).validate()


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher("8gaussians", out, overrides=QUIET + ["network.width=32", "network.depth=1",
                                                                "network.fourier=8", "train.iters=30"])


def test_resumed_run_equals_uninterrupted(tiny_teacher, tmp_path):
    args = QUIET + ["train.batch_size=32", "train.ckpt_every=7", "fdistill.critic_ratio=2"]
    run_distill(tiny_teacher, tmp_path / "full", method="fdistill", steps=2, overrides=args + ["train.iters=20"])
    run_distill(tiny_teacher, tmp_path / "half", method="fdistill", steps=2, overrides=args + ["train.iters=10"])
    mid = ckpt.load_tensors(tmp_path / "half" / ckpt.CHECKPOINT)[0]["module/ratio_bins/mean"]
    assert not torch.equal(mid, torch.ones_like(mid))  # the bins moved and were checkpointed
    run_distill(tiny_teacher, tmp_path / "half", method="fdistill", steps=2, overrides=args + ["train.iters=20"])
    full, half = (load_file(str(Path(d) / ckpt.MODEL)) for d in (tmp_path / "full", tmp_path / "half"))
    assert full.keys() == half.keys() and all(torch.equal(full[k], half[k]) for k in full)
    bins = [ckpt.load_tensors(tmp_path / d / ckpt.CHECKPOINT)[0]["module/ratio_bins/mean"] for d in ("full", "half")]
    assert torch.equal(*bins)




@pytest.mark.parametrize("features", ["teacher", "critic"])
def test_the_discriminator_reads_the_frozen_teachers_features_as_fastgen(tiny_teacher, tmp_path, monkeypatch,
                                                                         features):
    """By default (FastGen) the discriminator is a head of its own on the teacher network's features, trained
    beside the critic and reached by the generator's GAN term through the frozen teacher, whose weights stay
    as they were; `features=critic` puts it on the critic, as dmd2's."""
    from distmatch.methods import fdistill
    from distmatch.models import load_model

    teacher = load_model(tiny_teacher).init_net
    seen, forward = [], type(teacher).forward

    def watched(net, x, sigma, cond=None, return_features=False):
        seen.append((return_features and not net.training, x.requires_grad))  # the teacher's is in eval mode
        return forward(net, x, sigma, cond, return_features=return_features)

    monkeypatch.setattr(type(teacher), "forward", watched)
    before = {k: v.clone() for k, v in load_file(str(Path(tiny_teacher) / ckpt.MODEL)).items()}
    run = run_distill(tiny_teacher, tmp_path / "s", method="fdistill",
                      overrides=QUIET + ["train.batch_size=32", "train.iters=6", f"fdistill.features={features}"])
    modules, extra = ckpt.load_tensors(run / ckpt.CHECKPOINT)
    heads = {k.split("/")[1] for k in modules if "head" in k or k.startswith("module/disc/")}
    assert heads == ({"disc"} if features == "teacher" else {"critic"}), heads
    assert ("disc" in extra["optimizers"]) == (features == "teacher")
    # the teacher's features served the discriminator's updates (no graph) and the generator's GAN term (graph)
    on_teacher = {(f, g) for f, g in seen if f}
    assert on_teacher == ({(True, False), (True, True)} if features == "teacher" else set()), on_teacher
    assert all(torch.equal(before[k], v) for k, v in load_file(str(Path(tiny_teacher) / ckpt.MODEL)).items())
    assert fdistill.Options().features == "teacher"
