"""DMD2 against exact teachers: the DM gradient's direction, and a short distillation's quality."""
import pytest
import torch

from distmatch.methods.losses import dm_gradient, dm_loss
from distmatch.errors import UserError
from distmatch.teachers.gmm import GaussianMixture


def gaussian(mean, std):
    mean = torch.tensor(mean, dtype=torch.float64)
    return GaussianMixture([1.0], mean[None], torch.tensor([std ** 2], dtype=torch.float64))


def test_dm_gradient_moves_gaussian_student_to_gaussian_teacher():
    """With exact real and fake scores, descending the DM gradient carries N(μ_s, s²) to N(μ_t, t²)."""
    teacher = gaussian([1.0, -0.5], 0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g) * 0.8 + torch.tensor([-1.0, 1.0])
    x.requires_grad_(True)
    opt = torch.optim.SGD([x], lr=200.0)  # the surrogate's gradient is g / numel
    for _ in range(300):
        mean, std = x.detach().mean(0), x.detach().std(0).mean()
        fake = gaussian(mean.tolist(), float(std))  # the exact score of the student's current distribution
        sigma = torch.exp(torch.rand(len(x), generator=g) * 6 - 4)  # σ in [0.02, 7.4]
        with torch.no_grad():
            x_t = x + sigma[:, None] * torch.randn(x.shape, generator=g)
            grad = dm_gradient(x, teacher(x_t, sigma), fake(x_t, sigma))
        opt.zero_grad()
        dm_loss(x, grad).backward()
        opt.step()
    mean, std = x.detach().mean(0), x.detach().std(0)
    assert torch.allclose(mean, torch.tensor([1.0, -0.5]), atol=0.1), mean
    assert torch.allclose(std, torch.tensor([0.3, 0.3]), atol=0.1), std


def test_batch_normaliser_keeps_each_samples_push_in_proportion():
    """normaliser='batch': one scale for the whole batch, so a sample twice as far off is pushed twice as hard;
    the per-sample normaliser gives both a push of the same size."""
    x = torch.zeros(2, 2)
    real = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    fake = torch.zeros(2, 2)
    per_sample = dm_gradient(x, real, fake)
    batch = dm_gradient(x, real, fake, normaliser="batch")
    assert torch.allclose(per_sample[0], per_sample[1])
    assert torch.allclose(batch[1], 2 * batch[0])
    assert torch.allclose(batch, -real / 1.5)


def test_dm_gradient_is_zero_when_student_matches():
    teacher = gaussian([0.0, 0.0], 0.5)
    x = torch.randn(100, 2)
    sigma = torch.full((100,), 0.7)
    x_t = x + 0.7 * torch.randn_like(x)
    assert dm_gradient(x, teacher(x_t, sigma), teacher(x_t, sigma)).abs().max() == 0


def test_backward_simulation_draws_only_the_active_steps():
    """Spread draws give every active step an equal share of the batch; while only the first step is trained
    (student.first_only), every sample is drawn at step 0 and starts from pure noise at σ_0."""
    from distmatch.methods.student import FewStepStudent

    student = FewStepStudent([80.0, 0.8, 0.35, 0.15], (2,), "cpu", spread=True)
    g = torch.Generator().manual_seed(0)
    steps = student.pick_step(g, 64)
    assert torch.bincount(steps, minlength=4).tolist() == [16, 16, 16, 16]
    student.active = 1
    assert student.pick_step(g, 64).eq(0).all()
    shared = FewStepStudent([80.0, 0.8], (2,), "cpu", spread=False)
    shared.active = 1
    assert all(shared.pick_step(g, 8).eq(0).all() for _ in range(20))


def test_first_only_must_be_a_share():
    import pytest

    from distmatch.methods.student import StudentConfig
    from distmatch.errors import UserError

    with pytest.raises(UserError, match="first_only"):
        StudentConfig(steps=4, first_only=1.0).validate()


def test_step_critics_score_each_sample_with_its_own_step_critic():
    from distmatch.methods.common import Critic, StepCritics
    from dataclasses import asdict

    from distmatch.networks import NetworkConfig, build_denoiser

    torch.manual_seed(0)
    cfg = asdict(NetworkConfig(width=16, depth=1, fourier=4))
    nets = [build_denoiser(cfg, (2,)) for _ in range(3)]
    critics = StepCritics([Critic(net, gan=True) for net in nets])
    x, sigma = torch.randn(12, 2), torch.rand(12) + 0.1
    step = torch.tensor([0, 1, 2] * 4)
    x0, logits = critics(x, sigma, None, step)
    for k in range(3):
        rows = step == k
        want_x0, want_logits = critics.critics[k](x[rows], sigma[rows])
        assert torch.allclose(x0[rows], want_x0) and torch.allclose(logits[rows], want_logits)
    x0.sum().backward()  # every critic's weights get a gradient
    assert all(p.grad is not None for c in critics.critics for p in c.denoiser.parameters())


def test_dm_gradient_averaged_over_noise_draws_has_less_variance():
    """dmd2.dm_draws: d noise draws per sample, averaged: the same expected gradient, ~1/d of its variance."""
    import contextlib
    from types import SimpleNamespace

    from distmatch.methods.common import StudentCriticMethod

    teacher, fake = gaussian([1.0, -0.5], 0.3), gaussian([-1.0, 1.0], 0.8)
    host = SimpleNamespace(ctx=SimpleNamespace(autocast=contextlib.nullcontext), real=teacher,
                           opts=SimpleNamespace(normaliser="sample"))
    critic = lambda x_t, sigma, cond, steps: (fake(x_t, sigma, cond), None)  # noqa: E731
    torch.manual_seed(0)
    x = torch.randn(32, 2, dtype=torch.float64)
    runs = {}
    for d in (1, 8):
        sigma = torch.full((32 * d,), 1.0, dtype=torch.float64)
        runs[d] = torch.stack([StudentCriticMethod.dm_grad(host, critic, x, sigma, None) for _ in range(1000)])
        assert runs[d].shape == (1000, 32, 2)
    var1, var8 = runs[1].var(0).mean(), runs[8].var(0).mean()
    assert var8 < var1 / 4, (var1, var8)
    assert (runs[1].mean(0) - runs[8].mean(0)).abs().mean() < 0.1 * runs[8].mean(0).abs().mean()


def test_fourier_cap_limits_only_pure_noise_inputs_and_survives_saving():
    """student.fourier_cap: a generator's pure-noise inputs (σ >= 10) see only low-frequency Fourier features;
    inputs that carry data are untouched, and the saved config rebuilds the same network."""
    from dataclasses import asdict

    from distmatch.methods.common import init_copy
    from distmatch.methods.student import StudentConfig, student_network_config
    from distmatch.networks import NetworkConfig, build_denoiser

    torch.manual_seed(0)
    cfg = asdict(NetworkConfig(width=32, depth=1, fourier=16))
    teacher = build_denoiser(cfg, (2,))
    student = init_copy(teacher, "cpu", fourier_cap=1.0)
    sigma = torch.tensor([80.0, 80.0, 12.0, 2.0, 0.5, 0.01])
    x = torch.randn(6, 2) * sigma[:, None]
    with torch.no_grad():
        same = (student(x, sigma) - teacher(x, sigma)).abs().sum(1)
    assert same[3:].max() == 0 and same[:3].min() > 0, same
    rebuilt = build_denoiser(student_network_config(cfg, StudentConfig(fourier_cap=1.0)), (2,))
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x, sigma), student(x, sigma))
    keep = student.backbone.fourier.noise_keep
    assert 0 < keep.sum() < len(keep)  # some features kept, the high-frequency ones dropped


def test_ode_init_regresses_the_student_onto_the_teachers_map(short_mixture_run):
    """dmd2.ode_init = 1: regression on the teacher's ODE pairs alone already gives a 1-step student on every
    mode, near the teacher (measured 2.0x its SWD, off-mode 0.24), and the pairs are cached in the run."""
    from distmatch import checkpoint as ckpt
    from distmatch.methods import pairs

    r = short_mixture_run("dmd2", ["train.iters=600", "dmd2.ode_init=1", "train.batch_size=256",
                                   "dmd2.ode_pairs=4096"])
    cached, meta = ckpt.load_tensors(r.dir / pairs.PAIRS_FILE)
    assert cached["noise"].shape == (4096, 2) and meta["pairs"] == 4096
    assert r.stats["modes_covered"] == 1.0, r.stats
    assert r.swd < 0.1 * r.same_steps_swd, (r.swd, r.same_steps_swd)
    assert r.swd < 3 * r.teacher_swd, (r.swd, r.teacher_swd)
    assert r.stats["off_mode"] < 0.4, r.stats


def test_ode_init_must_be_a_share():
    from distmatch.methods.dmd2 import Options

    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="ode_init"):
            Options(ode_init=bad).validate()
    with pytest.raises(UserError, match="ode_pairs"):
        Options(ode_pairs=0).validate()


def test_published_defaults_hold_no_regression_and_the_recipe_adds_it(tmp_path):
    """`--method dmd2` on vectors is DMD2 as published (GAN on, no regression, no warm-up, one critic) for every K;
    `--recipe dmd2+ode` lays its levers over it by step count (warm-up for 1 step; weight 1, last level 0.05 and
    per-step critics for K > 1), and a user's --set beats either."""
    import json

    from distmatch.methods import run_distill
    from distmatch.teachers.train import train_teacher

    quiet = ["train.progress=false", "train.iters=2", "train.batch_size=16", "dmd2.ode_pairs=32"]
    teacher = train_teacher("8gaussians", tmp_path / "t", overrides=["train.progress=false", "train.iters=2",
                                                                     "network.width=16", "network.depth=1"])

    def stored(run):
        return json.loads((run / "run.json").read_text())

    for steps in (1, 4):
        cfg = stored(run_distill(teacher, tmp_path / f"p{steps}", steps=steps, overrides=quiet))["config"]
        assert cfg["dmd2"]["ode_init"] == 0 and cfg["dmd2"]["ode_weight"] == 0 and cfg["dmd2"]["gan"]
        assert not cfg["student"]["critic_per_step"] and cfg["student"]["sigma_last"] == 0.15
    for steps, share, weight, last, per_step in ((1, 0.25, 0.25, 0.15, False), (2, 0.0, 1.0, 0.05, True),
                                                 (4, 0.0, 1.0, 0.05, True)):
        run = stored(run_distill(teacher, tmp_path / f"r{steps}", steps=steps, overrides=quiet, recipe="dmd2+ode"))
        cfg = run["config"]
        assert run["recipe"] == "dmd2+ode" and run["method"] == "dmd2"
        assert cfg["dmd2"]["ode_init"] == share and cfg["dmd2"]["ode_weight"] == weight and not cfg["dmd2"]["gan"]
        assert cfg["student"]["sigma_last"] == last and cfg["student"]["critic_per_step"] == per_step
    run = stored(run_distill(teacher, tmp_path / "r2-set", steps=2, recipe="dmd2+ode",
                             overrides=quiet + ["dmd2.ode_init=0.5", "student.sigma_last=0.15"]))
    assert run["config"]["dmd2"]["ode_init"] == 0.5 and run["levels"][-1] == pytest.approx(0.15)
    with pytest.raises(UserError, match="recipe 'tdm\\+ode' is a recipe of tdm, not of dmd2"):
        run_distill(teacher, tmp_path / "bad", method="dmd2", recipe="tdm+ode", overrides=quiet)
    with pytest.raises(UserError, match="unknown recipe"):
        run_distill(teacher, tmp_path / "bad", recipe="dmd2+magic", overrides=quiet)


def test_a_vector_recipe_is_refused_on_images():
    from distmatch.methods import defaults_for

    with pytest.raises(UserError, match="recipe 'dmd2\\+ode' is defined for vector data only"):
        defaults_for("dmd2", "image", 1, "dmd2+ode")


@pytest.mark.parametrize("method,key", [("dmd", "pairs"), ("dmd2", "ode_pairs"), ("fdistill", "ode_pairs"),
                                        ("tdm", "ode_pairs")])
def test_every_method_makes_few_pairs_of_an_image_teacher(method, key):
    """An image teacher's pairs cost 18 Heun steps each: every method that regresses on them makes dmd's 1024 by
    default on images (seconds on a CPU), and the many a 2-D teacher's cheap ODE affords on vectors."""
    from distmatch.methods import defaults_for

    assert defaults_for(method, "image")[method][key] == 1024
    assert defaults_for(method, "image", 4)[method][key] == 1024
    assert defaults_for(method, "vector").get(method, {}).get(key, 16384) == 16384


@pytest.mark.parametrize("method", ["dmd2", "fdistill", "tdm"])
def test_ode_weight_keeps_regressing_the_student_on_the_pairs(tmp_path, method):
    """ode_weight > 0 (dmd2, fdistill, tdm): after any warm-up the student's update also carries the regression on
    the ODE pairs, so the student ends nearer the teacher's noise->sample map than one trained without it."""
    import json

    from distmatch import checkpoint as ckpt
    from distmatch.methods import pairs, run_distill
    from distmatch.methods.student import full
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    teacher = train_teacher("8gaussians", tmp_path / "t", overrides=["train.progress=false", "train.iters=200",
                                                                     "network.width=32", "network.depth=1"])
    quiet = ["train.progress=false", "train.iters=60", "train.batch_size=128", "train.lr=3e-3", "train.ema=0",
             f"{method}.critic_ratio=1", f"{method}.ode_pairs=512"]
    quiet += [f"{method}.ode_init=0"] if method != "tdm" else []  # tdm has no warm-up
    errors = {}
    for w in (0, 20):
        run = run_distill(teacher, tmp_path / f"w{w}", method=method, overrides=quiet + [f"{method}.ode_weight={w}"])
        if w:
            stored, _ = ckpt.load_tensors(run / pairs.PAIRS_FILE)
            logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            assert any("loss_reg" in rec for rec in logged)
        errors[w] = run
    z, y = stored["noise"], stored["sample"]
    for w, run in errors.items():
        student = load_model(run)
        s0 = student.config["sigmas"][0]
        with torch.no_grad():
            errors[w] = pairs.regression_loss(student.denoiser(z * s0, full(z, s0)), y).item()
    assert errors[20] < 0.5 * errors[0], errors


def test_ode_weight_must_not_be_negative():
    from distmatch.methods import dmd2, fdistill, tdm

    for options in (dmd2.Options, fdistill.Options, tdm.Options):
        with pytest.raises(UserError, match="ode_weight"):
            options(ode_weight=-1).validate()


@pytest.mark.parametrize("method", ["dmd2", "fdistill", "tdm", "dmd"])
def test_default_vector_run_of_each_method_is_as_published(tmp_path, method):
    """No regression beside the DM loss unless the method is DMD (whose regression is the method), no warm-up, no
    per-step critics, DMD's one critic update per student update, and tdm's loss and optimisers the authors'."""
    import json

    from distmatch.methods import run_distill
    from distmatch.teachers.train import train_teacher

    teacher = train_teacher("8gaussians", tmp_path / "t", overrides=["train.progress=false", "train.iters=2",
                                                                     "network.width=16", "network.depth=1"])
    run = run_distill(teacher, tmp_path / "s", method=method, overrides=["train.progress=false", "train.iters=1",
                                                                         "train.batch_size=16", "dmd.pairs=16"]
                      if method == "dmd" else ["train.progress=false", "train.iters=1", "train.batch_size=16"])
    cfg = json.loads((run / "run.json").read_text())["config"]
    opts = cfg[method]
    assert opts.get("ode_weight", 0) == 0 and opts.get("ode_init", 0) == 0
    assert not cfg["student"]["critic_per_step"]
    assert method != "dmd" or opts["regression_weight"] == 1.0
    assert method != "tdm" or (opts["huber_c"], opts["huber"], opts["critic_rate"], opts["clip_critic"],
                               cfg["train"]["weight_decay"]) == (1e-3, "element", 5.0, False, 1e-2)
    assert method != "dmd" or opts["critic_ratio"] == 1  # DMD's Algorithm 1; five came with DMD2
    assert method not in ("dmd2", "fdistill") or opts.get("gan", True)
    assert not (run / "dmd_pairs.safetensors").exists() or method == "dmd"


@pytest.mark.parametrize("levels, lo, hi", [(1000, 20, 980), (999, 20, 979), (4000, 80, 3920)])
def test_dm_levels_are_fractions_of_the_teachers_own_levels(levels, lo, hi):
    """DMD2's [0.02, 0.98] is 20..980 of a 1000-level teacher; a flow teacher's 999 levels below its top and a
    4000-step DDPM's levels are spanned the same way, and the whole range never indexes past the top level."""
    from types import SimpleNamespace
    from distmatch.methods.common import DistributionMatching

    host = SimpleNamespace(ctx=SimpleNamespace(device="cpu"), grid=torch.arange(levels).float())
    torch.manual_seed(0)
    idx, sigma = DistributionMatching.levels(host, 200_000, 0.02, 0.98)
    assert (int(idx.min()), int(idx.max())) == (lo, hi) and torch.equal(sigma, idx.float())
    idx, _ = DistributionMatching.levels(host, 200_000)
    assert (int(idx.min()), int(idx.max())) == (0, levels - 1)


@pytest.mark.parametrize("method", ["dmd2", "fdistill", "msd"])
def test_the_generators_gan_weight_is_the_published_constant_on_images_and_balanced_on_vectors(method):
    """DMD2's code (and FastGen's f-distill, and MSD's ADM stage, which is DMD2's GAN) multiplies the GAN loss by a
    constant (3e-3, ImageNet-64); vectors, where none was published, balance the GAN push against the DM gradient's."""
    from distmatch import config as config_mod
    from distmatch.methods import config_class, defaults_for

    def opts(kind):
        return getattr(config_mod.resolve(config_class(method), None, [], base=defaults_for(method, kind, 1)), method)

    image, vector = opts("image"), opts("vector")
    assert (image.gan_balance, image.gan_weight_g, image.gan_weight_d) == (False, 3e-3, 1e-2)
    assert (vector.gan_balance, vector.gan_weight_g) == (True, 0.5)
