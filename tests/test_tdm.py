"""TDM: each step's own noise-level interval, the student loss, a short run on the exact mixture, and resuming."""
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from distmatch import checkpoint as ckpt
from distmatch.methods import run_distill
from distmatch.methods.tdm import TDM, step_intervals, tdm_generator_loss
from distmatch.errors import UserError
from distmatch.schedules import karras_grid_1000, student_sigmas
from distmatch.teachers.train import train_teacher

QUIET = ["train.progress=false"]


@pytest.mark.parametrize("sigmas", [student_sigmas(1), student_sigmas(2), student_sigmas(4), [80.0, 10.0, 1.0, 0.1]])
def test_step_intervals_are_disjoint_and_inside_their_steps(sigmas):
    grid = karras_grid_1000()
    intervals = step_intervals(sigmas)
    assert len(intervals) == len(sigmas)
    for k, (lo, hi) in enumerate(intervals):
        below = sigmas[k + 1] if k + 1 < len(sigmas) else grid[20]
        assert lo <= hi
        assert grid[lo] >= below and grid[hi] < sigmas[k], (k, grid[lo], grid[hi])
        if k + 1 < len(sigmas):
            assert intervals[k + 1][1] < lo  # the next step's levels all lie below this step's
    # the levels drawn per sample stay inside their own step's interval
    fake = SimpleNamespace(intervals=intervals, grid=grid.float())
    k = torch.arange(4000) % len(sigmas)
    s = TDM.step_levels(fake, k)
    for j, (lo, hi) in enumerate(intervals):
        mine = s[k == j]
        assert mine.min() >= grid[lo].float() and mine.max() <= grid[hi].float()
        assert len(mine.unique()) > min(20, hi - lo)  # spread over the interval, not one level


def test_step_intervals_refuse_levels_too_close():
    with pytest.raises(UserError, match="too close"):
        step_intervals([80.0, 2.0, 1.99, 0.3])


def test_tdm_loss_pulls_towards_teacher_and_vanishes_at_a_match():
    torch.manual_seed(0)
    x0 = torch.randn(64, 2, requires_grad=True)
    real = torch.randn(64, 2)
    fake = real + torch.sign(torch.randn(64, 2)) * (0.1 + torch.rand(64, 2))  # every gap far above c = 1e-3
    w = (x0.detach() - real).abs().mean(1, keepdim=True)
    tdm_generator_loss(x0, real, fake).backward()
    # the authors' pseudo-Huber per element at c = 1e-3: each element pushed by the sign of its gap x̂_real - x̂_fake,
    # a unit step over mean |x̂_0 - x̂_real| (per sample it would push along the gap vector, below)
    assert torch.allclose(-x0.grad * 64 * 2, torch.sign(real - fake) / w, rtol=1e-3)
    x0.grad = None
    tdm_generator_loss(x0, real, fake, per="sample").backward()
    cos = torch.nn.functional.cosine_similarity(-x0.grad, real - fake, dim=1)
    assert (cos > 0.999).all()
    x0.grad = None
    tdm_generator_loss(x0, real, real).backward()
    assert x0.grad.abs().max() == 0


def test_tdm_trains_as_the_authors_code(tmp_path, monkeypatch):
    """The critic learns at five times the student's rate, AdamW decays both by 1e-2, and only the student's
    gradient is clipped (at 1)."""
    from distmatch.methods.common import Critic
    from distmatch.training.method import Context

    teacher = train_teacher("8gaussians", tmp_path / "t", overrides=QUIET + [
        "network.width=16", "network.depth=1", "network.fourier=4", "train.iters=2", "train.batch_size=32"])
    clipped, clip = [], Context.clip
    monkeypatch.setattr(Context, "clip", lambda ctx, module: clipped.append(module) or clip(ctx, module))
    run = run_distill(teacher, tmp_path / "s", method="tdm", overrides=QUIET + ["train.iters=2", "train.batch_size=16"])
    groups = {name: opt["param_groups"][0] for name, opt in ckpt.load_tensors(run / ckpt.CHECKPOINT)[1][
        "optimizers"].items()}
    assert groups["critic"]["base_lr"] == pytest.approx(5 * groups["gen"]["base_lr"]) and groups["gen"]["lr"] > 0
    assert groups["critic"]["weight_decay"] == groups["gen"]["weight_decay"] == 1e-2
    assert len(clipped) == 2 and not any(isinstance(m, Critic) for m in clipped)  # the two student updates


def rollout_owner(gen, move: str = "ddim", sigmas=(80.0, 2.5, 0.9, 0.35)):
    return SimpleNamespace(shape=(2,), sigmas=list(sigmas), gen=gen, student=SimpleNamespace(input_scale=sigmas[0]),
                           opts=SimpleNamespace(move=move), ctx=SimpleNamespace(device="cpu",
                                                                                 autocast=contextlib.nullcontext))


@pytest.mark.parametrize("move", ["ddim", "renoise"])
def test_rollout_runs_each_row_only_as_far_as_it_is_read(move):
    """A row that stops after step `last` costs no later passes, and every input and output it reads is the one
    the whole roll-out gives with the same draws."""
    calls = []

    def gen(x, sigma, cond):
        calls.append(len(x))
        return torch.tanh(x) + 0.1 * sigma[:, None]

    owner = rollout_owner(gen, move)
    torch.manual_seed(1)
    full_in, full_out = TDM.rollout(owner, 64, None)
    last = torch.arange(64) % 4
    calls.clear()
    torch.manual_seed(1)
    inputs, outputs = TDM.rollout(owner, 64, None, last)
    assert calls == [64, 48, 32, 16]
    for k in range(4):
        assert torch.allclose(outputs[k][last >= k], full_out[k][last >= k])
        assert torch.allclose(inputs[k][last >= k - 1], full_in[k][last >= k - 1])
    assert not torch.allclose(outputs[3], full_out[3])  # the rows that stopped earlier were not run


def test_the_trained_trajectory_is_tdms_ddim_and_the_one_the_student_samples():
    """TDM's student moves along its own predicted noise: x_{k+1} = x̂_0 + σ_{k+1} (x_k - x̂_0) / σ_k, with only the
    first noise random; the roll-out it is trained on is the chain `sample` runs from the same z."""
    from distmatch.samplers import few_step_sample

    def gen(x, sigma, cond):
        return torch.tanh(x / 3) + 0.1 * sigma[:, None]

    owner = rollout_owner(gen)
    torch.manual_seed(3)
    inputs, outputs = TDM.rollout(owner, 256, None)
    for k in range(3):
        eps_hat = (inputs[k] - outputs[k]) / owner.sigmas[k]
        assert torch.allclose(inputs[k + 1], outputs[k] + owner.sigmas[k + 1] * eps_hat, atol=1e-5)
    torch.manual_seed(3)
    z = torch.randn(256, 2)
    assert torch.allclose(few_step_sample(gen, z, owner.sigmas, move="ddim"), outputs[-1], atol=1e-5)
    assert not torch.allclose(few_step_sample(gen, z, owner.sigmas), outputs[-1], atol=1e-2)  # re-noised: another


def test_a_trajectory_sample_is_diffused_on_from_the_next_state_and_importance_weighted():
    """x_s = x_{k+1} + sqrt(s² - σ²_{k+1}) z, so its noise about x̂_0 has variance s² when ε̂ is Gaussian (weights
    about 1) and is not weighted at all after the last step (x_s = x̂_0 + s z); a student whose ε̂ is far from
    Gaussian (here 3x too wide) gets small weights, as in the authors' code."""
    owner = SimpleNamespace(sigmas=[80.0, 2.5, 0.9, 0.35], opts=SimpleNamespace(move="ddim"))
    torch.manual_seed(0)
    n, x0 = 20000, torch.randn(20000, 64) * 0.5
    for k, spread, expect in ((1, 1.0, 1.0), (3, 1.0, 1.0), (1, 3.0, 0.04)):
        steps = torch.full((n,), k)
        s = torch.full((n,), 0.95 if k == 1 else 0.2)
        x_in = x0 + owner.sigmas[k] * spread * torch.randn(n, 64)
        x_s, w = TDM.diffused(owner, x_in, x0, steps, s)
        noise = (x_s - x0) / s[:, None]
        if spread == 1.0:
            assert noise.std().item() == pytest.approx(1.0, abs=0.01)
        # 3x too wide: mean m² about 8.17 against 1, so weights about exp(-7.17 / 2) = 0.028 (and a little above)
        assert w.mean().item() == pytest.approx(expect, rel=0.1 if expect == 1 else 0.5)
        if k == 3:
            assert torch.allclose(w, torch.ones(n))
    assert w.max() < 0.5


def test_tdm_resumed_run_equals_uninterrupted(tmp_path):
    """Class-conditional, guided, 2-step: networks, both optimizers, EMA and every random draw survive a resume."""
    tiny = ["network.width=32", "network.depth=1", "network.fourier=8", "train.iters=30", "train.batch_size=128"]
    teacher = train_teacher("8gaussians-labeled", tmp_path / "t", overrides=tiny + QUIET)

    def args(iters):
        return QUIET + ["train.batch_size=32", "train.ckpt_every=7", "tdm.guidance=1.5", f"train.iters={iters}"]

    run_distill(teacher, tmp_path / "full", method="tdm", steps=2, overrides=args(20))
    run_distill(teacher, tmp_path / "half", method="tdm", steps=2, overrides=args(10))
    run_distill(teacher, tmp_path / "half", method="tdm", steps=2, overrides=args(20))
    a, b = (load_file(str(Path(tmp_path / r) / ckpt.MODEL)) for r in ("full", "half"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tdm_refuses_options_it_does_not_use(tmp_path):
    teacher_dir = train_teacher("8gaussians", tmp_path / "t", overrides=QUIET + [
        "network.width=16", "network.depth=1", "network.fourier=4", "train.iters=2", "train.batch_size=32"])
    with pytest.raises(UserError, match="tdm does not use student.critic_per_step"):
        run_distill(teacher_dir, tmp_path / "s", method="tdm", overrides=QUIET + ["student.critic_per_step=true"])
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_tdm_refuses_backsim_it_does_not_use(tmp_path):
    """tdm rolls out every step itself, so a non-default student.backsim would be ignored: refused instead."""
    teacher_dir = train_teacher("8gaussians", tmp_path / "t", overrides=QUIET + [
        "network.width=16", "network.depth=1", "network.fourier=4", "train.iters=2", "train.batch_size=32"])
    with pytest.raises(UserError, match="tdm does not use student.backsim"):
        run_distill(teacher_dir, tmp_path / "s", method="tdm", overrides=QUIET + ["student.backsim=shared"])
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_tdm_takes_its_distance_per_element_on_vectors_and_per_sample_on_images():
    """The authors' trajectory everywhere; the code's per-element pseudo-Huber on vectors, the paper's per-sample
    one on images (per element the last step lost the digits, RESULTS.md)."""
    from distmatch.methods import defaults_for
    from distmatch.methods.tdm import Options

    assert Options().move == "ddim" and Options().huber == "element"
    assert "tdm" not in defaults_for("tdm", "vector", 4)
    assert defaults_for("tdm", "image", 4)["tdm"] == {"huber": "sample", "ode_pairs": 1024}
