"""Teacher adapters at the σ-space boundary, checked against diffusers' own schedulers on tiny models built here."""
import math

import pytest
import torch

from distmatch.errors import UserError
from distmatch.samplers import ode_sample
from distmatch.teachers.adapters import EDMAdapter, VPAdapter, rebuild_adapter
from distmatch.teachers.gmm import GaussianMixture

diffusers = pytest.importorskip("diffusers")


def tiny_unet(seed=0, num_class_embeds=None, out_channels=1):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                                 num_class_embeds=num_class_embeds).eval()


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_adapter_gives_the_schedulers_own_x0(schedule, prediction):
    """D(x_σ, σ(t)) = DDPMScheduler.step(...).pred_original_sample (clip_sample off), x_σ = √(1+σ²) x_t, at
    timesteps from the ends to the middle."""
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction,
                                    clip_sample=False)
    adapter = VPAdapter(unet, sched.alphas_cumprod, prediction)
    g = torch.Generator().manual_seed(1)
    for t in (999, 700, 250, 10, 0):
        x_t = torch.randn(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            out = unet(x_t, torch.tensor([t, t])).sample
            want = sched.step(out, t, x_t).pred_original_sample
            sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]).sqrt().expand(2).float()
            got = adapter(x_t * (1 + sigma[0] ** 2).sqrt(), sigma)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max())), (t, (got - want).abs().max())


@pytest.mark.parametrize("limit", [dict(clip_sample=True, clip_sample_range=0.8),
                                   dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9)])
def test_a_folders_clip_or_threshold_limits_x0_as_its_scheduler_does(tmp_path, limit):
    """A DDPMPipeline folder whose scheduler clips (clip_sample) or thresholds x̂_0: the loaded teacher's limited
    denoiser equals step(...).pred_original_sample, which diffusers limits, from t = 999 to 0."""
    from distmatch.models import load_model
    from distmatch.samplers import limit_x0

    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **limit)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    teacher = load_model(tmp_path)
    d = limit_x0(teacher.denoiser, teacher.config["x0_limit"])
    g = torch.Generator().manual_seed(1)
    for t in (999, 500, 0):
        x_t = torch.randn(3, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = sched.step(unet(x_t, torch.tensor([t] * 3)).sample, t, x_t).pred_original_sample
            sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]).sqrt().expand(3).float()
            got = d(x_t * (1 + sigma[0] ** 2).sqrt(), sigma)
            scale = 1 + teacher.denoiser(x_t * (1 + sigma[0] ** 2).sqrt(), sigma).abs().max()  # before the limit
        assert torch.allclose(got, want, atol=1e-5 * scale), (t, (got - want).abs().max())


def test_teacher_sampling_keeps_a_clipping_teachers_samples_in_range(tmp_path):
    """Heun over a clip_sample teacher ends on a clamped x̂_0, so in range; the same network without the clip (a
    scheduler that does not clip, or wrap_teacher without clip_sample) leaves the range from σ = 157."""
    import distmatch
    from distmatch.models import load_model

    unet = tiny_unet()
    for clip in (True, False):
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=clip)
        diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / str(clip))
        x = load_model(tmp_path / str(clip)).sample(8, 3, seed=0)[0]
        assert (x.abs().max() <= 1) == clip, (clip, x.abs().max())
    a = sched.alphas_cumprod
    for clip in (1.0, None):
        x = distmatch.wrap_teacher(unet, (1, 8, 8), alphas_cumprod=a, clip_sample=clip).loaded.sample(8, 3)[0]
        assert (x.abs().max() <= 1) == (clip is not None)
    with pytest.raises(UserError, match="clip_sample"):
        distmatch.wrap_teacher(unet, (1, 8, 8), alphas_cumprod=a, clip_sample=0)


def test_vp_timestep_interpolates_in_log_sigma_like_diffusers_or_snaps_to_the_nearest():
    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear")
    adapter = VPAdapter(torch.nn.Identity(), diffusers.DDPMScheduler().alphas_cumprod)
    sigma = torch.tensor([3.0, 0.05, 120.0])
    log_sigmas = (((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5).log().numpy()
    want = [float(sched._sigma_to_t(s, log_sigmas)) for s in sigma.numpy()]
    assert torch.allclose(adapter.timestep(sigma), torch.tensor(want, dtype=torch.float32), atol=1e-3)
    adapter.timesteps = "discrete"
    snapped = adapter.timestep(sigma)
    assert snapped.dtype == torch.long and snapped.tolist() == [round(w) for w in want]


class MixtureAsEpsilon(torch.nn.Module):
    """A closed-form Gaussian mixture disguised as a DDPM ε-network: ε̂ = (x_σ - D_exact(x_σ, σ)) / σ."""

    def __init__(self, mixture, alphas_cumprod):
        super().__init__()
        self.mixture, self.alphas_cumprod = mixture, alphas_cumprod

    def forward(self, x_t, t):
        a = torch.stack([self.alphas_cumprod[int(i)] for i in t]).float()  # integer t: the table's levels
        sigma = ((1 - a) / a).sqrt()
        x = x_t * (1 + sigma ** 2).sqrt()[:, None]
        return (x - self.mixture(x, sigma).float()) / sigma[:, None]


def test_heun_over_the_vp_adapter_reproduces_a_mixture_disguised_as_an_eps_model():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.3, 0.7], means, torch.tensor([0.02, 0.02], dtype=torch.float64))
    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    adapter = VPAdapter(MixtureAsEpsilon(mixture, alphas), alphas, "epsilon", timesteps="discrete")
    schedule = adapter.schedule()
    x = ode_sample(adapter, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), 40, "heun",
                   sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)
    share = (x[:, 0] > 0).double().mean().item()
    assert abs(share - 0.7) < 0.03, share
    near = torch.cdist(x.double(), means).min(1).values
    assert near.median() < 0.2, near.median()


def test_the_ancestral_sampler_over_the_vp_adapter_reproduces_the_mixtures_weights_and_spread():
    """DDPM's posterior step in σ-space: the right mode weights and the right per-mode spread (std √0.02); a wrong
    posterior variance widens or narrows the modes."""
    from distmatch.samplers import ancestral_sample

    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.3, 0.7], means, torch.tensor([0.02, 0.02], dtype=torch.float64))
    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    adapter = VPAdapter(MixtureAsEpsilon(mixture, alphas), alphas, "epsilon", timesteps="discrete")
    schedule = adapter.schedule()
    x = ancestral_sample(adapter, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), 100,
                         sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max,
                         generator=torch.Generator().manual_seed(1)).double()
    assert abs((x[:, 0] > 0).double().mean().item() - 0.7) < 0.03
    spread = (x - means[torch.cdist(x, means).argmin(1)]).std(0)
    assert ((spread / 0.02 ** 0.5 - 1).abs() < 0.1).all(), spread


def score_sde_folder(path, sigma_max=50.0):
    """A tiny NCSN++-style teacher: a UNet2DModel with a Fourier time embedding (its output divided by σ, a score),
    saved as diffusers' ScoreSdeVePipeline."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",) * 2,
                                 layers_per_block=1, norm_num_groups=4, time_embedding_type="fourier")
    sched = diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=sigma_max)
    diffusers.ScoreSdeVePipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return path


def test_a_score_sde_folder_gives_tweedies_x0_in_its_own_range_and_rebuilds(tmp_path):
    """x̂'_0 = x' + σ'² s(x', σ') on the pipeline's [0, 1] images, read in distmatch's [-1, 1] (x = 2x' - 1,
    σ = 2σ'); its levels are the geometric range it was trained on, in those units."""
    from distmatch.models import load_model

    teacher = load_model(score_sde_folder(tmp_path / "t")).denoiser
    grid = teacher.schedule().grid
    assert torch.allclose(grid[[0, -1]], torch.tensor([0.02, 100.0], dtype=torch.float64))
    assert torch.allclose(grid[1:] / grid[:-1], grid[1] / grid[0])
    g = torch.Generator().manual_seed(4)
    for s in (0.01, 1.0, 50.0):
        x_net = torch.rand(2, 1, 8, 8, generator=g) + s * torch.randn(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = 2 * (x_net + s ** 2 * teacher.net(x_net, torch.full((2,), s)).sample) - 1
            got = teacher(2 * x_net - 1, torch.full((2,), 2 * s))
            again = rebuild_adapter(teacher.config(), teacher.net)(2 * x_net - 1, torch.full((2,), 2 * s))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max())), (s, (got - want).abs().max())
        assert torch.equal(again, got)


class MixtureAsScore(torch.nn.Module):
    """A closed-form Gaussian mixture on [-1, 1] disguised as a VE score network on [0, 1]: x' = (x + 1) / 2,
    σ' = σ / 2, s = (D' - x') / σ'² with D' = (D_exact(2x' - 1, 2σ') + 1) / 2."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x_net, sigma_net):
        d = (self.mixture(2 * x_net - 1, 2 * sigma_net).float() + 1) / 2
        return (d - x_net) / sigma_net[:, None] ** 2


def test_heun_over_the_score_adapter_reproduces_a_mixture_disguised_as_a_score_sde_model():
    """The mixture's modes and weights come back: a wrong map between [0, 1] and [-1, 1] moves or blurs them."""
    from distmatch.teachers.adapters import ScoreAdapter

    means = torch.tensor([[-0.6, 0.0], [0.6, 0.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.3, 0.7], means, torch.tensor([0.01, 0.01], dtype=torch.float64))
    adapter = ScoreAdapter(MixtureAsScore(mixture), 0.01, 50.0)
    schedule = adapter.schedule()
    x = ode_sample(adapter, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)),
                   40, "heun", sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)
    assert abs((x[:, 0] > 0).double().mean().item() - 0.7) < 0.03
    near = torch.cdist(x.double(), means).min(1).values
    assert near.median() < 0.15, near.median()


def edm_folder(path, scheduler="EDMEulerScheduler", prediction="epsilon", sigma_data=0.5, sigma_max=80.0):
    """A tiny UNet2DModel beside one of diffusers' EDM schedulers (its unet/ and scheduler/: diffusers has no
    stock pipeline for such a model)."""
    unet = tiny_unet(seed=3)
    unet.save_pretrained(path / "unet")
    getattr(diffusers, scheduler)(sigma_min=0.002, sigma_max=sigma_max, sigma_data=sigma_data,
                                  prediction_type=prediction).save_pretrained(path / "scheduler")
    return path


@pytest.mark.parametrize("scheduler", ["EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"])
@pytest.mark.parametrize("prediction, sigma_data", [("epsilon", 0.5), ("v_prediction", 1.0)])
def test_an_edm_folder_gives_the_schedulers_own_x0_and_rebuilds(tmp_path, scheduler, prediction, sigma_data):
    """D(x_σ, σ) = the scheduler's precondition_outputs of the network run on its precondition_inputs and
    precondition_noise, at the ends of its range and between; its levels are that range."""
    from distmatch.models import load_model

    model = load_model(edm_folder(tmp_path / "t", scheduler, prediction, sigma_data))
    teacher, sched = model.denoiser, getattr(diffusers, scheduler)(sigma_min=0.002, sigma_max=80.0,
                                                                     sigma_data=sigma_data, prediction_type=prediction)
    assert model.config["sigma_data"] == sigma_data
    assert torch.allclose(teacher.schedule().grid[[0, -1]], torch.tensor([0.002, 80.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    for s in (0.002, 0.3, 5.0, 80.0):
        x = torch.randn(2, 1, 8, 8, generator=g) * (0.5 + s)
        sigma = torch.tensor(s)
        with torch.no_grad():
            out = teacher.net(sched.precondition_inputs(x, sigma), sched.precondition_noise(sigma)).sample
            want = sched.precondition_outputs(x, out, sigma)
            got = teacher(x, torch.full((2,), s))
            again = rebuild_adapter(teacher.config(), teacher.net)(x, torch.full((2,), s))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max())), (s, (got - want).abs().max())
        assert torch.equal(again, got)


class MixtureAsPreconditioned(torch.nn.Module):
    """A closed-form Gaussian mixture disguised as an EDM-preconditioned network F(c_in x, ln(σ)/4) predicting
    "v_prediction": F = -(D_exact - c_skip x) / c_out."""

    def __init__(self, mixture, sigma_data):
        super().__init__()
        self.mixture, self.sigma_data = mixture, sigma_data

    def forward(self, x_in, c_noise):
        sigma = (4 * c_noise).exp()
        x = x_in * (sigma[:, None] ** 2 + self.sigma_data ** 2).sqrt()
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        return -(self.mixture(x, sigma).float() - c_skip[:, None] * x) / c_out[:, None]


def test_heun_over_the_preconditioned_adapter_reproduces_a_mixture_disguised_as_an_edm_model():
    """The mixture's modes and weights come back: a wrong c_in, c_noise or sign of c_out moves or blurs them."""
    from distmatch.teachers.preconditioned import PreconditionedAdapter

    means = torch.tensor([[-0.6, 0.0], [0.6, 0.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.3, 0.7], means, torch.tensor([0.01, 0.01], dtype=torch.float64))
    adapter = PreconditionedAdapter(MixtureAsPreconditioned(mixture, 1.0), 0.002, 80.0, 1.0, "v_prediction")
    x = ode_sample(adapter, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), 40, "heun",
                   sigma_min=0.002, sigma_max=80.0)
    assert abs((x[:, 0] > 0).double().mean().item() - 0.7) < 0.03
    near = torch.cdist(x.double(), means).min(1).values
    assert near.median() < 0.15, near.median()


def test_wrap_teacher_reads_a_score_network_on_its_own_range():
    """prediction="score": a σ-space network on [-1, 1] returning the score, x̂_0 = x + σ² s, its levels the
    geometric range it was trained on."""
    import distmatch

    net = torch.nn.Linear(2, 2)
    teacher = distmatch.wrap_teacher(lambda_net(net), (2,), prediction="score", sigma_min=0.01, sigma_max=50.0,
                                     features=None).loaded.denoiser
    x, sigma = torch.randn(3, 2), torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        assert torch.allclose(teacher(x, sigma), x + sigma[:, None] ** 2 * net(x), rtol=1e-5, atol=1e-4)
    grid = teacher.schedule().grid
    assert torch.allclose(grid[[0, -1]], torch.tensor([0.01, 50.0], dtype=torch.float64))
    assert torch.allclose(grid[1:] / grid[:-1], grid[1] / grid[0])


def test_edm_adapter_and_rebuild():
    net = torch.nn.Linear(2, 2)
    for prediction in ("x0", "epsilon"):
        adapter = EDMAdapter(lambda_net(net), prediction)
        x, sigma = torch.randn(3, 2), torch.tensor([0.5, 1.0, 2.0])
        want = net(x) if prediction == "x0" else x - sigma[:, None] * net(x)
        assert torch.allclose(adapter(x, sigma), want)
        again = rebuild_adapter(adapter.config(), lambda_net(net))
        assert torch.allclose(again(x, sigma), want)


@pytest.mark.parametrize("variance", ["learned_range", "learned"])
def test_a_unet_that_learns_its_variance_gives_its_predictions_x0(tmp_path, variance):
    """A UNet with 2C output channels (ε and a learned variance, as improved DDPM / ADM models): the loaded
    folder's D equals DDPMScheduler.step(...).pred_original_sample, which splits the output the same way."""
    from distmatch.models import load_model

    unet = tiny_unet(out_channels=2)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type=variance, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    teacher = load_model(tmp_path)
    g = torch.Generator().manual_seed(2)
    for t in (999, 400, 0):
        x_t = torch.randn(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = sched.step(unet(x_t, torch.tensor([t, t])).sample, t, x_t, generator=g).pred_original_sample
            sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]).sqrt().expand(2).float()
            got = teacher.denoiser(x_t * (1 + sigma[0] ** 2).sqrt(), sigma)
        assert got.shape == x_t.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max())), (t, (got - want).abs().max())


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "EulerDiscreteScheduler"])
def test_a_zero_terminal_snr_teacher_ends_at_a_finite_level_with_the_schedulers_x0(scheduler):
    """ᾱ_999 = 0 (rescale_betas_zero_snr; Euler puts 2^-24 there): the top level becomes a finite σ, where D equals
    the scheduler's x̂_0 = -v up to √ᾱ_top x_t (3.2e-5 x_t), and every level below is exact."""
    unet = tiny_unet()
    cls = getattr(diffusers, scheduler)
    sched = cls(num_train_timesteps=1000, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True,
                                   prediction_type="v_prediction", clip_sample=False)
    adapter = VPAdapter(unet, sched.alphas_cumprod, "v_prediction")
    sigmas = adapter.schedule().grid
    assert torch.isfinite(sigmas).all() and (sigmas[1:] > sigmas[:-1]).all() and 1e4 < sigmas[-1] < 1e5
    g = torch.Generator().manual_seed(3)
    for t, tol in ((999, 2e-4), (998, 1e-5), (500, 1e-5), (0, 1e-5)):
        x_t = torch.randn(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = ddpm.step(unet(x_t, torch.tensor([t, t])).sample, t, x_t).pred_original_sample
            sigma = sigmas[t].expand(2).float()
            got = adapter(x_t * (1 + sigmas[t].double() ** 2).sqrt().float(), sigma)
        assert torch.allclose(got, want, atol=tol * (1 + want.abs().max())), (t, (got - want).abs().max())


def test_a_table_ending_near_zero_is_zero_terminal_and_any_other_bad_end_is_refused():
    """A cosine table without its β clipping ends at ᾱ = 4e-33 (σ = 2e16, where float32 cancels and an exact ε
    teacher sampled at std 1e5): its top becomes a finite level as a zero-terminal one's does. A last value that is
    not a table's (0.9, negative, above 1, infinite) was rewritten in silence; it is refused as anywhere else."""
    s = torch.arange(1001, dtype=torch.float64) / 1000
    f = torch.cos((s + 0.008) / 1.008 * torch.pi / 2) ** 2
    cosine = (f / f[0])[1:]
    assert cosine[-1] < 1e-30
    sigmas = VPAdapter(tiny_unet(), cosine).schedule().grid
    assert torch.isfinite(sigmas).all() and (sigmas[1:] > sigmas[:-1]).all() and sigmas[-1] < 1e4
    linear = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    for last in (0.9, -0.5, 5.0, float("inf")):
        with pytest.raises(UserError, match="alphas_cumprod must be a falling 1-D table of values in"):
            VPAdapter(tiny_unet(), torch.cat([linear[:-1], torch.tensor([last], dtype=torch.float64)]))


def test_a_dits_students_and_critics_keep_every_label_while_they_train():
    """diffusers' DiT drops a tenth of its labels in training mode (for guidance); a student or critic copy of it
    trains in that mode and must still see the class it is given: two calls on the same input agree."""
    import distmatch
    from distmatch.methods.common import init_copy

    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2,
                                          num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=3,
                                          norm_num_groups=1)
    teacher = distmatch.wrap_teacher(dit, sample_shape=(1, 8, 8), num_classes=3,
                                     alphas_cumprod=diffusers.DDPMScheduler().alphas_cumprod)
    copy = init_copy(teacher.loaded.init_net, "cpu")
    assert copy.training
    x, sigma, labels = torch.randn(64, 1, 8, 8), torch.full((64,), 2.0), torch.arange(64) % 3
    with torch.no_grad():
        assert torch.equal(copy(x, sigma, labels), copy(x, sigma, labels))


def test_a_dit_folder_is_a_class_conditional_teacher_with_the_schedulers_x0_and_a_gan_on_its_tokens(tmp_path):
    """transformer/ + scheduler/ with a DiTTransformer2DModel (learned variance, 3 classes and a null one): D equals
    DDPMScheduler.step's x̂_0 for each label, the GAN head reads the middle block's tokens as a 4x4 map, and a
    1-step student distils with its GAN on and samples a chosen class."""
    import numpy as np

    from distmatch.methods import run_distill
    from distmatch.models import load_model

    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=3,
                                          norm_num_groups=1).eval()
    sched = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    dit.save_pretrained(tmp_path / "t" / "transformer")
    sched.save_pretrained(tmp_path / "t" / "scheduler")
    teacher = load_model(tmp_path / "t")
    assert teacher.num_classes == 3 and teacher.spec.shape == (1, 8, 8)
    assert (teacher.denoiser.feature_dim, teacher.denoiser.feature_size) == (16, (4, 4))
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 2, 3])  # 3: the null label
    for t in (999, 500, 0):
        x_t = torch.randn(3, 1, 8, 8, generator=g)
        with torch.no_grad():
            want = sched.step(dit(x_t, torch.tensor([t] * 3), class_labels=labels).sample, t, x_t,
                              generator=g).pred_original_sample
            sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]).sqrt().expand(3).float()
            got = teacher.denoiser(x_t * (1 + sigma[0] ** 2).sqrt(), sigma, labels)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max())), (t, (got - want).abs().max())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.integers(0, 255, (32, 8, 8), dtype=np.uint8),
             labels=rng.integers(0, 3, 32))
    student = run_distill(tmp_path / "t", tmp_path / "s", steps=1, data_source=str(tmp_path / "data.npz"),
                          overrides=["train.progress=false", "train.iters=3", "train.batch_size=8"])
    x, cls = load_model(student).sample(2, cond=1)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all() and cls.tolist() == [1, 1]
    grids = sorted(p.name for p in (student / "previews").iterdir())  # image grids of the student while it trained
    assert grids == ["it0000000.png", "it0000003.png"]


def test_a_unet_without_a_mid_block_gives_the_gan_its_deepest_down_block(tmp_path):
    """UNet2DModel(mid_block_type=None) has no mid_block; DMD2's GAN head reads the last down block instead."""
    import numpy as np

    from distmatch.methods import run_distill
    from distmatch.teachers.diffusers_folder import load_diffusers_teacher

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), mid_block_type=None,
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "t")
    adapter = load_diffusers_teacher(tmp_path / "t").denoiser
    assert adapter.features == "down_blocks.1"
    _, features = adapter(torch.zeros(2, 1, 8, 8), torch.ones(2), return_features=True)
    assert features.shape == (2, 16, 4, 4)  # the deepest level's channels, at a quarter of the size
    np.save(tmp_path / "data.npy", np.random.default_rng(0).integers(0, 255, (32, 8, 8), dtype=np.uint8))
    student = run_distill(tmp_path / "t", tmp_path / "s", steps=1, data_source=str(tmp_path / "data.npy"),
                          overrides=["train.progress=false", "train.iters=3", "train.batch_size=8"])
    log = (student / "log.jsonl").read_text()
    assert "loss_gan_g" in log and '"gan_scale"' in log  # the weight the GAN term got, beside its loss


class OwnUNet(torch.nn.Module):
    """A user's own little U-Net in plain PyTorch, eps = net(x_t, t): 8x8 -> 4x4 -> 8x8."""

    def __init__(self):
        super().__init__()
        self.enc, self.down = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 4, 2, 1)
        self.time, self.mid = torch.nn.Linear(1, 8), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.up, self.out = torch.nn.ConvTranspose2d(8, 8, 4, 2, 1), torch.nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.relu(self.enc(x))
        m = torch.relu(self.mid(self.down(h) + self.time(t[:, None].float() / 1000)[:, :, None, None]))
        return self.out(torch.cat([h, self.up(m)], 1))


def test_wrap_teacher_finds_the_bottleneck_a_gan_head_reads(tmp_path):
    """features="auto" (the default): a plain U-Net's lowest-resolution stage where the encoder ends, a diffusers
    UNet's mid_block, a vector network's last hidden layer; dmd2 with its GAN then runs on the network as it is."""
    import numpy as np

    import distmatch

    alphas = diffusers.DDPMScheduler().alphas_cumprod
    own = distmatch.wrap_teacher(OwnUNet(), (1, 8, 8), alphas_cumprod=alphas)
    assert own.loaded.config["network"]["features"] == "mid" and own.loaded.denoiser.feature_size == (4, 4)
    assert distmatch.wrap_teacher(tiny_unet(), (1, 8, 8), alphas_cumprod=alphas).loaded.config["network"][
        "features"] == "mid_block"
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    vector = distmatch.wrap_teacher(lambda_net(mlp), (2,))
    assert vector.loaded.config["network"]["features"] == "net.1"  # the SiLU after the hidden layer
    assert distmatch.wrap_teacher(OwnUNet(), (1, 8, 8), alphas_cumprod=alphas,
                                  features=None).loaded.config["network"]["features"] is None
    images = np.random.default_rng(0).integers(0, 255, (32, 8, 8), dtype=np.uint8)
    student = distmatch.distill(own, tmp_path / "s", data=images, progress=False,
                                settings={"train.iters": 3, "train.batch_size": 8})
    assert "loss_gan_g" in (tmp_path / "s" / "log.jsonl").read_text() and student.sample(2).shape == (2, 8, 8)


def lambda_net(mlp):
    """An x0-predicting σ-space denoiser around an MLP that ignores σ."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp

        def forward(self, x, sigma):
            return self.net(x)
    return Net()


def test_a_network_whose_prediction_does_not_fit_the_samples_is_refused_in_one_line():
    from distmatch import wrap_teacher

    alphas = diffusers.DDPMScheduler().alphas_cumprod
    with pytest.raises(UserError, match=r"prediction has shape \(2, 3, 8, 8\) for 2 samples of shape \(1, 8, 8\)"):
        wrap_teacher(tiny_unet(out_channels=3), (1, 8, 8), alphas_cumprod=alphas)
    with pytest.raises(UserError, match=r"fails on samples of shape \(2, 8, 8\): .*expected input"):
        wrap_teacher(tiny_unet(), (2, 8, 8), prediction="epsilon")


def test_a_network_that_is_not_finite_at_its_lowest_level_is_refused_at_load(tmp_path):
    """A UNet with a Fourier time embedding takes log(t): with a DDPM scheduler it is NaN at t = 0, where every
    sampler of the teacher ends. Loading says so, rather than sampling NaN images with exit status 0."""
    from distmatch.models import load_model

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                 layers_per_block=1, norm_num_groups=4, time_embedding_type="fourier")
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "t")
    with pytest.raises(UserError, match=r"non-finite values at σ = 0.01, the lowest of the levels"):
        load_model(tmp_path / "t")


def test_vp_adapter_refuses_what_it_cannot_read():
    alphas = diffusers.DDPMScheduler().alphas_cumprod
    with pytest.raises(UserError, match="predicts one of epsilon, v_prediction, sample"):
        VPAdapter(torch.nn.Identity(), alphas, "flow")
    with pytest.raises(UserError, match="falling 1-D table"):
        VPAdapter(torch.nn.Identity(), alphas.flip(0), "epsilon")
    with pytest.raises(UserError, match="no sub-module 'bottleneck'"):
        VPAdapter(tiny_unet(), alphas, features="bottleneck")


def test_vp_student_levels_are_the_pinned_timesteps_and_start_from_the_pipelines_noise():
    alphas = diffusers.DDPMScheduler().alphas_cumprod
    schedule = VPAdapter(torch.nn.Identity(), alphas).schedule()
    sigma = ((1 - alphas) / alphas).sqrt().double()
    assert schedule.student_levels(4, 7.0, 0.35) == pytest.approx([float(sigma[t]) for t in (999, 749, 499, 249)])
    assert schedule.student_levels(1, 7.0, 0.35) == pytest.approx([float(sigma[999])])
    s0 = float(sigma[999])
    assert schedule.input_scale(s0) == pytest.approx(math.sqrt(1 + s0 ** 2))  # x_vp = z, as a pipeline starts
    few = VPAdapter(torch.nn.Identity(), alphas[::20]).schedule()  # a 50-timestep teacher
    assert len(set(few.student_levels(50, 7.0, 0.35))) == 50
    with pytest.raises(UserError, match="51-step student needs 51 of its teacher's training timesteps"):
        few.student_levels(51, 7.0, 0.35)  # not 51 copies of its top level


def test_a_ve_students_levels_must_fall():
    from distmatch.schedules import student_sigmas

    assert student_sigmas(3, 80.0, 1.0, 0.25) == pytest.approx([80.0, 0.5, 0.25])
    with pytest.raises(UserError, match="fall from student.sigma_top to student.sigma_last > 0, got 0.1 and 1"):
        student_sigmas(4, 80.0, 0.1, 1.0)


def test_an_epsilon_teachers_student_starts_no_higher_than_stable_diffusions_top_level():
    """Linear β (σ_999 = 157): the student's levels are LCM's over the first 727 steps (σ_726 <= 14.62 < σ_727);
    Stable Diffusion's scaled-linear table (σ_999 = 14.61) keeps DMD2's published 999, 749, 499, 249; a
    v-prediction teacher (no ε amplification) and start_sigma_max = 0 keep the top level."""
    from distmatch.methods.student import StudentConfig

    linear = VPAdapter(torch.nn.Identity(), diffusers.DDPMScheduler().alphas_cumprod).schedule()
    sd_table = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    sd = VPAdapter(torch.nn.Identity(), sd_table).schedule()
    assert float(linear.grid[726]) <= 14.62 < float(linear.grid[727]) and float(sd.grid[999]) <= 14.62
    assert StudentConfig(steps=1).resolved_sigmas(linear, epsilon=True) == [float(linear.grid[726])]
    assert StudentConfig(steps=4).resolved_sigmas(linear, epsilon=True) == [float(linear.grid[t])
                                                                            for t in (723, 542, 361, 180)]
    assert StudentConfig(steps=4).resolved_sigmas(sd, epsilon=True) == [float(sd.grid[t]) for t in (999, 749, 499, 249)]
    assert StudentConfig(steps=1).resolved_sigmas(linear, epsilon=False) == [float(linear.grid[999])]
    assert StudentConfig(steps=1, start_sigma_max=0).resolved_sigmas(linear, epsilon=True) == [float(linear.grid[999])]
    assert StudentConfig(steps=2, sigmas=[100.0, 0.5]).resolved_sigmas(linear) == [100.0, 0.5]
    with pytest.raises(UserError, match="student.sigmas go up to 1e.09, above the teacher's top level σ = 157"):
        StudentConfig(steps=2, sigmas=[1e9, 0.5]).resolved_sigmas(linear)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_adapter_gives_x_s_minus_s_v_and_its_students_levels_are_the_schedulers(shift):
    from distmatch.schedules import FLOW_TOP
    from distmatch.teachers.adapters import FlowAdapter

    unet = tiny_unet()
    adapter = FlowAdapter(unet, 1000, shift)
    g = torch.Generator().manual_seed(2)
    for s in (1.0, 0.9, 0.5, 0.1, 0.001):
        x_s = torch.randn(2, 1, 8, 8, generator=g)
        sigma = torch.full((2,), FLOW_TOP if s == 1 else s / (1 - s))
        with torch.no_grad():
            want = x_s - s * unet(x_s, torch.full((2,), 1000 * s)).sample
            got = adapter(x_s * (1 + sigma[0]), sigma)
        assert torch.allclose(got, want, atol=2e-5), (s, (got - want).abs().max())
    for k, at in ((1, 0.0), (2, 0.0), (4, 0.0), (2, 0.5), (4, 0.25)):  # the stock levels, or student.flow_terminal's
        terminal = shift * at / (1 + (shift - 1) * at) if at else None  # stretched to end at s = shift(at)
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=terminal)
        sched.set_timesteps(k)
        levels = torch.tensor(adapter.schedule().student_levels(k, 0, 0, 0, at), dtype=torch.float64)
        s = torch.where(levels >= FLOW_TOP, torch.ones_like(levels), levels / (1 + levels))
        assert torch.allclose(s.float(), sched.sigmas[:-1], atol=1e-6), (k, s, sched.sigmas)


def test_a_flow_folder_feeds_its_network_the_schedulers_timesteps(tmp_path):
    """diffusers runs a flow network at t = s · num_train_timesteps (not 1000 s when that is 50), as does the
    folder's teacher."""
    from distmatch.models import load_model

    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=50, shift=2.0)
    tiny_unet().save_pretrained(tmp_path / "t" / "unet")
    sched.save_pretrained(tmp_path / "t" / "scheduler")
    seen = []
    teacher = load_model(tmp_path / "t").denoiser
    teacher.net.register_forward_hook(lambda _m, args, _out: seen.append(float(args[1].flatten()[0])))
    with torch.no_grad():
        teacher(torch.zeros(1, 1, 8, 8), torch.tensor([1.0]))  # σ = 1: s = 1/2
    assert seen == [pytest.approx(25.0)]


FLOW_SOLVERS = {"heun": lambda: diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0),
                "unipc": lambda: diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                                                   prediction_type="flow_prediction"),
                "dpm": lambda: diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                                                     prediction_type="flow_prediction")}


@pytest.mark.parametrize("solver", list(FLOW_SOLVERS))
def test_a_folder_with_any_flow_scheduler_gives_that_schedulers_x0(tmp_path, solver):
    """FlowMatchHeun, and UniPC / DPM-Solver on flow sigmas (as flow models ship), are the flow teacher of their
    shift: D(x_σ, σ) at each of the scheduler's own levels s is its x̂_0 = x_s - s v, the network fed t = 1000 s
    (as it was trained; UniPC and DPM-Solver round their timesteps down to integers while they sample)."""
    from distmatch.schedules import FLOW_TOP
    from distmatch.models import load_model

    sched = FLOW_SOLVERS[solver]()
    tiny_unet().save_pretrained(tmp_path / "t" / "unet")
    sched.save_pretrained(tmp_path / "t" / "scheduler")
    teacher = load_model(tmp_path / "t").denoiser
    assert (teacher.convention, teacher.shift) == ("flow", 3.0)
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(3)
    for i in (0, 3, 7):
        s = float(sched.sigmas[i])
        sigma = torch.full((2,), FLOW_TOP if s == 1 else s / (1 - s))
        x_s = torch.randn(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            v = teacher.net(x_s, torch.full((2,), 1000 * s)).sample
            if solver == "heun":
                want = x_s - s * v
            else:
                sched._step_index = i
                want = sched.convert_model_output(v, sample=x_s)
            got = teacher(x_s * (1 + sigma[0]), sigma)
        assert torch.allclose(got, want, atol=2e-5), (solver, i, (got - want).abs().max())


@pytest.mark.parametrize("config, match", [
    (dict(use_flow_sigmas=True, prediction_type="epsilon"), "runs flow sigmas .* prediction_type is 'epsilon'"),
    (dict(prediction_type="flow_prediction"), "'flow_prediction' without use_flow_sigmas"),
    (dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True), "use_dynamic_shift")])
def test_a_flow_solver_folder_that_cannot_be_read_as_one_is_refused_in_one_line(tmp_path, config, match):
    from distmatch.models import load_model

    tiny_unet().save_pretrained(tmp_path / "t" / "unet")
    diffusers.UniPCMultistepScheduler(**config).save_pretrained(tmp_path / "t" / "scheduler")
    with pytest.raises(UserError, match=match):
        load_model(tmp_path / "t")


def test_a_class_conditional_unet_is_guided_with_its_null_label():
    """wrap_teacher(num_classes=C) on a UNet2DModel with C + 1 class embeddings: the real score is
    x̂_u + s (x̂_c - x̂_u), x̂_u at the null label C; labels reach diffusers as class_labels."""
    import distmatch
    from distmatch.methods.common import RealScore

    unet = tiny_unet(num_class_embeds=4)
    alphas = diffusers.DDPMScheduler().alphas_cumprod
    teacher = distmatch.wrap_teacher(unet, sample_shape=(1, 8, 8), alphas_cumprod=alphas, num_classes=3)
    adapter = teacher.loaded.denoiser
    x, sigma, cond = torch.randn(2, 1, 8, 8), torch.tensor([2.0, 0.5]), torch.tensor([0, 2])
    with torch.no_grad():
        c, u = adapter(x, sigma, cond), adapter(x, sigma, torch.tensor([3, 3]))
        guided = RealScore(adapter, guidance=2.5, num_classes=3)(x, sigma, cond)
        t = adapter.timestep(sigma)
        by_hand = x - sigma[:, None, None, None] * unet(x / (1 + sigma[:, None, None, None] ** 2).sqrt(), t,
                                                        class_labels=cond).sample
    assert torch.allclose(c, by_hand, atol=1e-5) and not torch.allclose(c, u)
    assert torch.allclose(guided, u + 2.5 * (c - u), atol=1e-5)


def test_sample_chooses_a_teachers_solver_and_refuses_one_it_does_not_know(tmp_path, capsys):
    """`sample --solver ancestral` on a DDPM folder: NFE = steps, and the seed decides the
    draw; an unknown solver is one line and exit status 2."""
    import numpy as np
    from test_cli import assert_user_error, run_cli

    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "t")
    outs = []
    for seed in (0, 0, 1):
        out = tmp_path / f"x{len(outs)}.npy"
        code, printed, _ = run_cli(capsys, "sample", "--model", str(tmp_path / "t"), "--n", "4", "--steps", "5",
                                   "--solver", "ancestral", "--seed", str(seed), "--out", str(out))
        assert code == 0 and "5 network evaluations" in printed
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    assert_user_error(capsys, ["sample", "--model", str(tmp_path / "t"), "--n", "4", "--solver", "rk4", "--out",
                               str(tmp_path / "y.npy")], "unknown solver", "ancestral")


def test_dmd_pairs_of_a_clipping_teacher_are_its_clipped_ode_samples():
    from distmatch.methods.pairs import make_pairs

    alphas = diffusers.DDPMScheduler().alphas_cumprod
    adapter = VPAdapter(tiny_unet(), alphas)
    top = float(adapter.schedule().sigma_max)
    for limit in ({"range": 1.0}, None):
        y = make_pairs(adapter, 8, (1, 8, 8), 3, "heun", top, [], 0, "cpu", limit=limit)["sample"]
        assert (y.abs().max() <= 1) == (limit is not None), y.abs().max()


def test_a_dit_folder_as_the_hub_keeps_it_is_read_as_diffusers_reads_it(tmp_path):
    """The Hub's DiT folders name the model's former class, Transformer2DModel, with its old keys, and keep class
    names in model_index.json's id2label: read as a DiT, its names taken by a class, its students rebuilt without
    the old keys; a component folder given for the whole model is refused with the folder to give instead."""
    import json

    from distmatch.methods import run_distill
    from distmatch.models import load_model

    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2,
                                          num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=12,
                                          norm_num_groups=1)
    folder = tmp_path / "DiT-XL-2-256"
    dit.save_pretrained(folder / "transformer")
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(folder / "scheduler")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    old_keys = {"cross_attention_dim": None, "num_vector_embeds": None, "only_cross_attention": False,
                "use_linear_projection": False}
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {**config, **old_keys, "_class_name": "Transformer2DModel", "norm_type": "ada_norm_zero"}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "_diffusers_version": "0.12.0.dev0", "id2label": {"0": "tench, Tinca tinca",
                                                                                         "7": "cock"},
        "scheduler": ["diffusers", "DDIMScheduler"], "transformer": ["diffusers", "Transformer2DModel"]}))
    teacher = load_model(folder)
    assert teacher.num_classes == 12 and type(teacher.denoiser.net).__name__ == "DiTTransformer2DModel"
    assert [teacher.class_index(c) for c in ("Tinca tinca", "tench", "cock", "7")] == [0, 0, 7, 7]
    with pytest.raises(UserError, match=r"knows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(12 in all\) or a name of"):
        teacher.class_index("hen")
    student = run_distill(folder, tmp_path / "s", steps=1,
                          overrides=["train.progress=false", "train.iters=1", "train.batch_size=4", "dmd2.gan=false"])
    assert not set(old_keys) & set(json.loads((student / "config.json").read_text())["network"]["net_config"])
    assert load_model(student).class_index("cock") == 7
    for part, cls in (("transformer", "Transformer2DModel"), ("scheduler", "DDIMScheduler")):
        with pytest.raises(UserError, match=rf"is one component of a diffusers model \(its {cls}\); give the folder "
                                            rf"that holds it, {folder}$"):
            load_model(folder / part)


@pytest.mark.parametrize("predict_epsilon,prediction", [(False, "sample"), (True, "epsilon")])
def test_a_scheduler_saved_before_prediction_type_is_read_by_its_predict_epsilon(tmp_path, predict_epsilon,
                                                                                 prediction):
    """Folders saved by diffusers 0.7-0.11 say predict_epsilon, which diffusers now ignores (reading ε)."""
    import json

    from distmatch.models import load_model

    tiny_unet().save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    file = tmp_path / "scheduler" / "scheduler_config.json"
    config = {k: v for k, v in json.loads(file.read_text()).items() if k != "prediction_type"}
    file.write_text(json.dumps({**config, "predict_epsilon": predict_epsilon, "_diffusers_version": "0.9.0"}))
    assert load_model(tmp_path).denoiser.prediction == prediction
