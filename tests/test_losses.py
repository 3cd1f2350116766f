"""The distribution-matching family's pieces against hand computations: the critic's denoising loss and its σ
weighting, the GAN losses, classifier-free guidance in the real score, the two time-scale cadence, the critic's
detached inputs, f-distill's per-bin ratio normalisation and density ratio, and the DM gradient and its surrogate."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distmatch.methods import common
from distmatch.methods.common import RealScore, StudentCriticMethod
from distmatch.methods.fdistill import RatioBins
from distmatch.methods.losses import (critic_loss, density_ratio, dm_gradient, dm_loss, gan_discriminator_loss,
                                      gan_generator_loss, gan_scale)
from distmatch.training.method import Batch

QUIET = ["train.progress=false"]


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ------------------------------------------------------------------------------------------ critic loss

# λ(σ) = (σ² + σ_d²) / (σ σ_d)² at σ_d = 0.5, worked out by hand:
#   σ = 0.1: 0.26 / 0.0025 = 104;  σ = 0.5: 0.5 / 0.0625 = 8;  σ = 1: 1.25 / 0.25 = 5;  σ = 2: 4.25 / 1 = 4.25
EDM_WEIGHTS = {0.1: 104.0, 0.5: 8.0, 1.0: 5.0, 2.0: 4.25}
# min(σ_d²/σ², 5) / σ_d² at σ_d = 0.5: σ = 0.1: SNR 25 -> 5 -> 20;  0.2: SNR 6.25 -> 5 -> 20;
#   0.25: SNR 4 -> 16;  0.5: 1 -> 4;  1: 0.25 -> 1;  2: 0.0625 -> 0.25
SNR_WEIGHTS = {0.1: 20.0, 0.2: 20.0, 0.25: 16.0, 0.5: 4.0, 1.0: 1.0, 2.0: 0.25}


@pytest.mark.parametrize("weighting,table", [("edm", EDM_WEIGHTS), ("snr", SNR_WEIGHTS)])
def test_critic_loss_weight_of_each_sigma(weighting, table):
    """A unit error on every coordinate leaves the loss equal to the weight λ(σ) itself."""
    for sigma, weight in table.items():
        loss = critic_loss(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([sigma]), 0.5, weighting)
        assert loss.item() == pytest.approx(weight, rel=1e-5), (weighting, sigma)


def test_critic_loss_snr_cap_and_unknown_weighting():
    # cap 2: σ = 0.25 has SNR 4, capped to 2 -> 2 / 0.25 = 8; σ = 1 (SNR 0.25) is below the cap -> 1
    sigma = torch.tensor([0.25, 1.0])
    per_sample = [critic_loss(torch.ones(1, 2), torch.zeros(1, 2), sigma[i:i + 1], 0.5, "snr", snr_cap=2.0).item()
                  for i in range(2)]
    assert per_sample == pytest.approx([8.0, 1.0])
    with pytest.raises(ValueError, match="weighting"):
        critic_loss(torch.ones(1, 2), torch.zeros(1, 2), sigma[:1], 0.5, "uniform")


def test_critic_loss_batch_value_by_hand():
    """Mean over every element of λ(σ_i) (x̂_ij - x_ij)²: squared errors summed per sample are 2, 2, 4 and 0.25."""
    target = torch.tensor([[1.0, -1.0], [0.0, 0.0], [3.0, 1.0], [0.5, 0.5]])
    pred = target + torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, 0.0], [0.0, 0.5]])
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    expected = (104 * 2 + 8 * 2 + 5 * 4 + 4.25 * 0.25) / 8
    assert critic_loss(pred, target, sigma, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # image-shaped (B, C, H, W): each sample's weight broadcasts over its pixels; unit errors -> mean of (8, 5)
    img = critic_loss(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]), 0.5)
    assert img.item() == pytest.approx(6.5, rel=1e-6)


def test_critic_loss_is_zero_at_the_target_and_grows_with_the_error():
    g = torch.Generator().manual_seed(0)
    target, direction = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    sigma = torch.rand(8, generator=g) * 3 + 0.05
    losses = [critic_loss(target + c * direction, target, sigma, 0.5).item() for c in (0.0, 0.5, 1.0, 2.0)]
    assert losses[0] == 0.0
    assert losses[1] < losses[2] < losses[3]
    assert losses[3] == pytest.approx(4 * losses[2], rel=1e-5) and losses[1] == pytest.approx(losses[2] / 4, rel=1e-5)


def test_critic_loss_weighs_each_sample_by_its_own_sigma():
    """Two samples with the same error: the one at small σ pulls λ(0.1)/λ(2) = 104/4.25 times harder."""
    target = torch.zeros(2, 2)
    pred = torch.ones(2, 2, requires_grad=True)
    critic_loss(pred, target, torch.tensor([0.1, 2.0]), 0.5).backward()
    # d/dpred of mean(λ_i (pred - target)²) = 2 λ_i (pred - target) / numel
    assert torch.allclose(pred.grad, torch.tensor([[104.0, 104.0], [4.25, 4.25]]) * 2 / 4, rtol=1e-5)
    # the same error on the small-σ sample alone costs more than on the large-σ sample alone
    small = critic_loss(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), target, torch.tensor([0.1, 2.0]), 0.5)
    large = critic_loss(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), target, torch.tensor([0.1, 2.0]), 0.5)
    assert small.item() == pytest.approx(104 * 2 / 4) and large.item() == pytest.approx(4.25 * 2 / 4)


# ------------------------------------------------------------------------------------------ GAN losses

def test_gan_losses_values_by_hand():
    fake, real = [0.0, 1.0, -2.0], [0.5, -1.0]
    f, r = torch.tensor(fake), torch.tensor(real)
    assert gan_generator_loss(f).item() == pytest.approx(sum(softplus(-v) for v in fake) / 3, rel=1e-6)
    expected_d = sum(softplus(v) for v in fake) / 3 + sum(softplus(-v) for v in real) / 2
    assert gan_discriminator_loss(f, r).item() == pytest.approx(expected_d, rel=1e-6)
    # an undecided discriminator (all logits 0): log 2 for the generator, 2 log 2 for the discriminator
    zero = torch.zeros(4)
    assert gan_generator_loss(zero).item() == pytest.approx(math.log(2))
    assert gan_discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))


def test_gan_losses_gradient_signs():
    fake, real = [0.0, 1.0, -2.0], [0.5, -1.0]
    f = torch.tensor(fake, requires_grad=True)
    gan_generator_loss(f).backward()
    # d softplus(-f)/df = -sigmoid(-f): raising a fake logit lowers the generator's loss
    assert f.grad.tolist() == pytest.approx([-sigmoid(-v) / 3 for v in fake], rel=1e-5)
    assert (f.grad < 0).all()
    f = torch.tensor(fake, requires_grad=True)
    r = torch.tensor(real, requires_grad=True)
    gan_discriminator_loss(f, r).backward()
    # the discriminator's loss falls as fake logits go down and real logits go up
    assert f.grad.tolist() == pytest.approx([sigmoid(v) / 3 for v in fake], rel=1e-5)
    assert r.grad.tolist() == pytest.approx([-sigmoid(-v) / 2 for v in real], rel=1e-5)
    assert (f.grad > 0).all() and (r.grad < 0).all()
    # and a finite step in those directions does lower each loss
    f, r = torch.tensor(fake), torch.tensor(real)
    assert gan_discriminator_loss(f - 1, r + 1) < gan_discriminator_loss(f, r)
    assert gan_discriminator_loss(f + 1, r) > gan_discriminator_loss(f, r)
    assert gan_generator_loss(f + 1) < gan_generator_loss(f)


def test_balanced_gan_weight_makes_the_gan_push_a_set_fraction_of_the_dm_push():
    x = torch.randn(8, 3, requires_grad=True)
    loss_dm = dm_loss(x, torch.randn(8, 3))
    loss_g = gan_generator_loss((x * torch.randn(3)).sum(1))
    w = gan_scale(loss_dm, loss_g, x, 0.5, balance=True)
    g_dm, = torch.autograd.grad(loss_dm, x, retain_graph=True)
    g_gan, = torch.autograd.grad(w * loss_g, x)
    assert g_gan.norm().item() == pytest.approx(0.5 * g_dm.norm().item(), rel=1e-5)
    assert not w.requires_grad  # a weight, not a path for gradients
    assert gan_scale(loss_dm, loss_g, x, 3e-3, balance=False) == 3e-3  # DMD2's code: the constant itself


# ------------------------------------------------------------------------------------------ guidance

class LabelTeacher(nn.Module):
    """D(x, σ, c) = (c + 1) x + σ c, with no label meaning the null label C; records the labels of each call."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.calls = num_classes, []

    def forward(self, x, sigma, cond=None):
        self.calls.append(None if cond is None else cond.tolist())
        label = torch.full((len(x),), self.num_classes) if cond is None else cond
        c = label.float()[:, None]
        return (c + 1) * x + sigma[:, None] * c


X = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
SIGMA = torch.tensor([0.5, 2.0])
COND = torch.tensor([0, 2])
# by hand, C = 3:  conditional  row 0 (c=0): 1 x + 0         = [1, 2];      row 1 (c=2): 3 x + 4 = [1, 5.5]
#                  unconditional row 0 (c=3): 4 x + 0.5*3     = [5.5, 9.5];  row 1 (c=3): 4 x + 6 = [2, 8]
COND_X0 = torch.tensor([[1.0, 2.0], [1.0, 5.5]])
UNCOND_X0 = torch.tensor([[5.5, 9.5], [2.0, 8.0]])


def test_real_score_guidance_is_uncond_plus_s_times_the_difference():
    teacher = LabelTeacher(3)
    out = RealScore(teacher, guidance=2.5, num_classes=3)(X, SIGMA, COND)
    # u + 2.5 (c - u): row 0: [5.5 + 2.5 (1 - 5.5), 9.5 + 2.5 (2 - 9.5)]; row 1: [2 + 2.5 (1 - 2), 8 + 2.5 (5.5 - 8)]
    assert torch.allclose(out, torch.tensor([[-5.75, -9.25], [-0.5, 1.75]]))
    assert len(teacher.calls) == 1 and teacher.calls[0] == [0, 2, 3, 3]  # one batched call: labels, then null
    teacher.calls.clear()
    assert torch.allclose(RealScore(teacher, guidance=0.0, num_classes=3)(X, SIGMA, COND), UNCOND_X0)


def test_real_score_without_guidance_or_labels_calls_the_teacher_once():
    teacher = LabelTeacher(3)
    assert torch.allclose(RealScore(teacher, guidance=1.0, num_classes=3)(X, SIGMA, COND), COND_X0)
    assert teacher.calls == [[0, 2]]
    teacher.calls.clear()
    assert torch.allclose(RealScore(teacher, guidance=2.5, num_classes=3)(X, SIGMA, None), UNCOND_X0)
    assert teacher.calls == [None]  # unconditional: the teacher's own unconditional output, unguided
    teacher.calls.clear()
    assert torch.allclose(RealScore(teacher, guidance=2.5, num_classes=0)(X, SIGMA, COND), COND_X0)
    assert teacher.calls == [[0, 2]]  # a teacher without classes has no null label to guide with


# ------------------------------------------------------------------------------------------ two time-scales

class CadenceRecorder(StudentCriticMethod):
    """StudentCriticMethod.step alone: critic and generator updates replaced by records of the calls."""

    def __init__(self, ratio: int, first_only_iters: int = 0, steps: int = 1):
        self.opts = SimpleNamespace(critic_ratio=ratio, gan_weight_d=0.03)
        self.first_only_iters = first_only_iters
        self.student = SimpleNamespace(active=None, sigmas=[80.0, 1.0, 0.2][:steps])
        self.calls = []

    def critic_step(self, batch, gan_weight_d=0.0):
        self.calls.append(("critic", gan_weight_d, self.student.active))
        return {"loss_critic": 1.0}

    def generator_step(self, batch):
        self.calls.append(("gen", None, self.student.active))
        return {"loss_dm": 2.0}


@pytest.mark.parametrize("ratio", [1, 3, 5])
def test_step_updates_the_critic_every_iteration_and_the_student_every_ratio_th(ratio):
    m = CadenceRecorder(ratio)
    logs = [m.step(None, it) for it in range(10)]
    gen_iters = [it for it in range(10) if it % ratio == 0]  # ratio 3: 0, 3, 6, 9
    expected = []
    for it in range(10):
        expected.append(("critic", 0.03, 1))
        if it in gen_iters:
            expected.append(("gen", None, 1))  # after that iteration's critic update
    assert m.calls == expected
    assert [it for it, rec in enumerate(logs) if "loss_dm" in rec] == gen_iters
    assert all(rec["loss_critic"] == 1.0 for rec in logs)


def test_step_trains_only_the_first_step_during_first_only():
    m = CadenceRecorder(2, first_only_iters=3, steps=3)
    for it in range(6):
        m.step(None, it)
    active = [a for kind, _, a in m.calls if kind == "critic"]
    assert active == [1, 1, 1, 3, 3, 3]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from distmatch.teachers.train import train_teacher

    return train_teacher("8gaussians", tmp_path_factory.mktemp("teacher"),
                         overrides=QUIET + ["train.iters=2", "network.width=16", "network.depth=1"])


def run_dmd2(teacher, out, monkeypatch, overrides, on_build=None):
    """A real tiny dmd2 run; `on_build(method)` sees the method once it is built; returns the method."""
    from distmatch.methods import dmd2, run_distill

    made = []

    class Captured(dmd2.DMD2):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            if on_build is not None:
                on_build(self)

    monkeypatch.setattr(dmd2, "Method", Captured)
    run_distill(teacher, out, method="dmd2", overrides=QUIET + overrides)
    assert len(made) == 1
    return made[0]


def adam_steps(opt) -> set[int]:
    state = getattr(opt, "optimizer", opt).state  # accelerate wraps the optimizer
    return {int(s["step"]) for s in state.values()}


def test_real_dmd2_run_keeps_the_cadence_and_freezes_the_critic_for_the_student(tiny_teacher, tmp_path, monkeypatch):
    """10 iterations, critic_ratio 3: 10 critic and 4 student optimizer steps (iterations 0, 3, 6, 9). While the
    student's loss is backpropagated (through the GAN head too) every critic weight is frozen and its gradient
    untouched; the critic is trainable again for its own next update."""
    events = []

    def spy(method):
        critic_params = list(method.ctx.unwrap(method.critic).parameters())
        gen_params = list(method.ctx.unwrap(method.gen).parameters())
        opt_c, opt_g = method.opt_c, method.opt_g
        c_step, g_zero, g_step, gen_step = opt_c.step, opt_g.zero_grad, opt_g.step, method.generator_step
        snapshot = []

        def critic_step(*args, **kwargs):
            events.append(("critic", all(p.requires_grad for p in critic_params)))
            return c_step(*args, **kwargs)

        def gen_zero_grad(*args, **kwargs):  # just before the student's loss is backpropagated
            snapshot[:] = [None if p.grad is None else p.grad.clone() for p in critic_params]
            return g_zero(*args, **kwargs)

        def gen_opt_step(*args, **kwargs):  # just after it was
            frozen = not any(p.requires_grad for p in critic_params)
            untouched = all((b is None and p.grad is None) or (b is not None and torch.equal(b, p.grad))
                            for b, p in zip(snapshot, critic_params))
            reached = all(p.grad is not None for p in gen_params)
            events.append(("gen", frozen and untouched and reached))
            return g_step(*args, **kwargs)

        def generator_step(batch):
            logs = gen_step(batch)
            events.append(("after gen", all(p.requires_grad for p in critic_params)))
            return logs

        opt_c.step, opt_g.zero_grad, opt_g.step, method.generator_step = (critic_step, gen_zero_grad, gen_opt_step,
                                                                          generator_step)

    method = run_dmd2(tiny_teacher, tmp_path / "s", monkeypatch,
                      ["train.iters=10", "train.batch_size=16", "train.log_every=1", "dmd2.critic_ratio=3"], spy)
    assert adam_steps(method.opt_c) == {10} and adam_steps(method.opt_g) == {4}
    kinds = [k for k, _ in events]
    assert kinds == (["critic", "gen", "after gen"] + ["critic"] * 2) * 3 + ["critic", "gen", "after gen"]
    assert all(ok for _, ok in events), events
    logs = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert [rec["it"] for rec in logs] == list(range(1, 11))  # "it" counts iterations done
    assert [rec["it"] - 1 for rec in logs if "loss_dm" in rec] == [0, 3, 6, 9]
    assert all("loss_critic" in rec and "loss_gan_d" in rec for rec in logs)


def test_critic_step_sees_detached_student_samples_and_real_rows(tiny_teacher, tmp_path, monkeypatch):
    """The critic's update leaves no gradient on the generator; its input is the student's samples (detached)
    followed by the real batch, and the discriminator loss gets the logits of those fake and real rows."""
    method = run_dmd2(tiny_teacher, tmp_path / "s", monkeypatch, ["train.iters=1", "train.batch_size=16"])
    n = method.ctx.train.batch_size
    gen, critic = method.ctx.unwrap(method.gen), method.ctx.unwrap(method.critic)
    seen = {}
    hooks = [gen.register_forward_hook(lambda mod, args, out: seen.setdefault("gen", out)),
             critic.register_forward_hook(lambda mod, args, out: seen.update(critic_in=args[0], critic_out=out))]
    monkeypatch.setattr(common, "noised", lambda x, sigma: x)  # no noise: the rows can be recognised
    original_d = common.gan_discriminator_loss

    def spy_d(logits_fake, logits_real):
        seen["d"] = (logits_fake, logits_real)
        return original_d(logits_fake, logits_real)

    monkeypatch.setattr(common, "gan_discriminator_loss", spy_d)
    for p in list(gen.parameters()) + list(critic.parameters()):
        p.grad = None
    real = torch.randn(n, 2) + 3.0
    try:
        logs = method.critic_step(Batch(real, None), gan_weight_d=1.0)
    finally:
        for h in hooks:
            h.remove()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())  # denoiser and head
    x_in = seen["critic_in"]
    assert x_in.shape == (2 * n, 2) and not x_in.requires_grad
    assert torch.equal(x_in[:n], seen["gen"].float()) and torch.equal(x_in[n:], real)
    logits = seen["critic_out"][1]
    fake_d, real_d = seen["d"]
    assert fake_d.shape == real_d.shape == (n,)
    assert torch.equal(fake_d, logits[:n]) and torch.equal(real_d, logits[n:])
    assert logs["loss_gan_d"] == pytest.approx(original_d(fake_d, real_d).item())


# ------------------------------------------------------------------------------------------ f-distill pieces

def test_ratio_bins_bin_of_is_equal_width_and_clamped():
    two = RatioBins(bins=2, momentum=0.5, t_range=(0, 1000))
    assert two.bin_of(torch.tensor([0, 499, 500, 999])).tolist() == [0, 0, 1, 1]
    ten = RatioBins(bins=10, momentum=0.5, t_range=(0, 1000))
    assert ten.bin_of(torch.tensor([0, 99, 100, 555, 900, 999, 1000])).tolist() == [0, 0, 1, 5, 9, 9, 9]


def test_ratio_bins_update_seen_bins_with_their_momentum():
    """m = 0.8 (not 0.5, where mean and batch mean would weigh alike): mean <- 0.8 mean + 0.2 batch mean."""
    bins = RatioBins(bins=2, momentum=0.8, t_range=(0, 1000))
    out = bins.normalise(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([100, 200, 300]))  # all in bin 0, mean 3
    # bin 0: 0.8 * 1 + 0.2 * 3 = 1.4; bin 1 unseen: stays 1
    assert bins.mean.tolist() == pytest.approx([1.4, 1.0])
    assert out.tolist() == pytest.approx([1 / 1.4, 2 / 1.4, 6 / 1.4], rel=1e-5)
    out = bins.normalise(torch.tensor([0.4, 2.0, 4.0]), torch.tensor([0, 600, 999]))
    # bin 0: 0.8 * 1.4 + 0.2 * 0.4 = 1.2; bin 1: batch mean 3 -> 0.8 * 1 + 0.2 * 3 = 1.4
    assert bins.mean.tolist() == pytest.approx([1.2, 1.4])
    assert out.tolist() == pytest.approx([0.4 / 1.2, 2 / 1.4, 4 / 1.4], rel=1e-5)
    # over processes: counts and totals are summed (two identical processes give the same means)
    twin = RatioBins(bins=2, momentum=0.8, t_range=(0, 1000))
    twin.normalise(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([100, 200, 300]), all_reduce=lambda t: 2 * t)
    assert twin.mean.tolist() == pytest.approx([1.4, 1.0])


def test_density_ratio_clamps_logits_then_ratios_and_is_detached():
    logits = torch.tensor([-20.0, -3.0, 0.0, 1.0, 2.5, 15.0], requires_grad=True)
    wide = density_ratio(logits, clamp_logit=10.0, r_min=0.0, r_max=1e9)  # only the logit clamp acts
    assert wide.tolist() == pytest.approx([math.exp(v) for v in (-10, -3, 0, 1, 2.5, 10)], rel=1e-5)
    assert density_ratio(logits, clamp_logit=2.0, r_min=0.0, r_max=1e9).tolist() == pytest.approx(
        [math.exp(v) for v in (-2, -2, 0, 1, 2, 2)], rel=1e-5)
    default = density_ratio(logits)  # logits to [-10, 10], then r to [0.1, 20]
    assert default.tolist() == pytest.approx([0.1, 0.1, 1.0, math.e, math.exp(2.5), 20.0], rel=1e-5)
    assert not default.requires_grad and default.grad_fn is None
    assert density_ratio(logits.detach().to(torch.bfloat16)).dtype == torch.float32


# ------------------------------------------------------------------------------------------ DM gradient

# x, x̂_real, x̂_fake; by hand: sample 0: |x - real| = [1, 2], mean 1.5, fake - real = [2, 2] -> [4/3, 4/3];
#                             sample 1: |x - real| = [1, 1], mean 1,   fake - real = [-1, 2] -> [-1, 2]
DM_X = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
DM_REAL = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
DM_FAKE = torch.tensor([[2.0, 2.0], [0.0, 1.0]])
DM_G = torch.tensor([[4 / 3, 4 / 3], [-1.0, 2.0]])


def test_dm_gradient_by_hand():
    assert torch.allclose(dm_gradient(DM_X, DM_REAL, DM_FAKE), DM_G, rtol=1e-5)
    # image-shaped: the normaliser is the mean over all of a sample's dimensions
    shape = (2, 1, 1, 2)
    g = dm_gradient(DM_X.view(shape), DM_REAL.view(shape), DM_FAKE.view(shape))
    assert torch.allclose(g, DM_G.view(shape), rtol=1e-5)
    assert dm_gradient(DM_X.double(), DM_REAL, DM_FAKE).dtype == torch.float32


def test_dm_loss_gradient_is_g_over_numel_and_weighted_per_sample():
    x = DM_X.clone().requires_grad_(True)
    g = DM_G.clone().requires_grad_(True)
    loss = dm_loss(x, g)
    loss.backward()
    assert torch.allclose(x.grad, DM_G / 4, rtol=1e-6)
    assert g.grad is None  # the target is detached: nothing flows into the gradient itself
    assert loss.item() == pytest.approx(0.5 * (DM_G ** 2).mean().item(), rel=1e-6)  # 0.5 ||g||² / numel
    x = DM_X.clone().requires_grad_(True)
    weight = torch.tensor([2.0, 0.5])
    dm_loss(x, DM_G, weight=weight).backward()
    assert torch.allclose(x.grad, torch.tensor([[8 / 3, 8 / 3], [-0.5, 1.0]]) / 4, rtol=1e-6)
