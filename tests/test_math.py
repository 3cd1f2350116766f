"""Schedules, conversions, the exact mixture denoiser and the teacher samplers."""
import math

import pytest
import torch

from distmatch.eval.vectors import sliced_wasserstein
from distmatch.parameterization import (edm_coefficients, eps_from_x0, flow_sigma, vp_sigma, x0_from_eps,
                                        x0_from_velocity, x0_from_vp_v)
from distmatch.samplers import few_step_sample, ode_sample, teacher_nfe
from distmatch.schedules import karras_grid_1000, karras_sigmas, sample_grid_sigmas, student_sigmas
from distmatch.teachers.gmm import GaussianMixture


def ring(k=8, radius=1.0, std=0.05):
    a = torch.arange(k) * 2 * math.pi / k
    return GaussianMixture(torch.ones(k), torch.stack([radius * a.cos(), radius * a.sin()], 1), torch.full((k,), std ** 2),
                           labels=list(range(k)), num_classes=k)


def test_karras_grid_endpoints_and_order():
    s = karras_sigmas(18)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
    assert torch.all(s[1:] < s[:-1])
    g = karras_grid_1000()
    assert g[20] == pytest.approx(0.0032, rel=0.05) and g[980] == pytest.approx(72.05, rel=0.01)
    d = sample_grid_sigmas(5000, 0.02, 0.98, torch.Generator().manual_seed(0))
    assert d.min() >= g[20] * 0.999 and d.max() <= g[980] * 1.001


def test_student_sigmas():
    assert student_sigmas(1) == [80.0]
    s = student_sigmas(4, sigma_last=0.35)
    assert len(s) == 4 and s[0] == 80.0 and s[-1] == pytest.approx(0.35)
    assert s[1] == pytest.approx(2.58, rel=0.01)
    assert all(b < a for a, b in zip(s, s[1:]))


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    sigma = torch.rand(64, generator=g) * 5 + 0.01
    x = x0 + sigma[:, None] * eps
    assert torch.allclose(eps_from_x0(x, x0, sigma), eps, atol=1e-4)
    assert torch.allclose(x0_from_eps(x, eps, sigma), x0, atol=1e-5)
    # VP v-prediction: v = sqrt(a) eps - sqrt(1-a) x0 with x_vp = x / sqrt(1+σ²)
    abar = 1 / (1 + sigma ** 2)
    assert torch.allclose(vp_sigma(abar), sigma, rtol=1e-4)
    v = abar.sqrt()[:, None] * eps - (1 - abar).sqrt()[:, None] * x0
    assert torch.allclose(x0_from_vp_v(x, v, sigma), x0, atol=1e-4)
    # flow matching: x_t = (1-t) x0 + t eps, velocity = eps - x0, x_t = x / (1+σ)
    t = sigma / (1 + sigma)
    assert torch.allclose(flow_sigma(t), sigma, rtol=1e-4)
    assert torch.allclose(x0_from_velocity(x, eps - x0, sigma), x0, atol=1e-4)


def test_edm_coefficients_limits():
    c_skip, c_out, c_in, _ = edm_coefficients(torch.tensor([1e-4, 80.0]), 0.5)
    assert c_skip[0] == pytest.approx(1.0, abs=1e-6) and c_out[0] == pytest.approx(1e-4, rel=1e-2)
    assert c_out[1] == pytest.approx(0.5, rel=1e-3) and c_in[1] == pytest.approx(1 / 80, rel=1e-3)


def test_exact_denoiser_matches_monte_carlo():
    """D(x, σ) = E[x0 | x_σ = x], estimated by importance weighting exact mixture samples."""
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [[[0.1, 0.02], [0.02, 0.05]], [[0.2, 0.0], [0.0, 0.1]]])
    x0, _ = gm.sample(400000, torch.Generator().manual_seed(0))
    for sigma in (0.2, 0.7, 2.0):
        x = torch.tensor([[0.1, 0.2], [-0.8, 0.1], [1.5, -0.4]])
        logw = -((x[:, None, :] - x0[None].double()) ** 2).sum(-1) / (2 * sigma ** 2)
        mc = (torch.softmax(logw, 1) @ x0.double()).float()
        exact = gm(x, torch.full((3,), sigma))
        assert torch.allclose(exact, mc, atol=0.02), (sigma, exact, mc)


def test_exact_denoiser_is_tweedie():
    """D(x, σ) = x + σ² ∇log p_σ(x), checked with autograd on the mixture's log density."""
    gm = ring()
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    sigma = 0.3
    score = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)[0]
    d = gm(x.detach().float(), torch.full((16,), sigma))
    assert torch.allclose(d.double(), x.detach() + sigma ** 2 * score, atol=1e-4)


def test_conditional_mixture_restricts_components():
    gm = ring()
    x = torch.zeros(8, 2)
    d = gm(x, torch.full((8,), 10.0), torch.arange(8))  # at large σ only the class mean is left
    assert torch.allclose(d, gm.means.float(), atol=1e-3)


def test_heun_with_exact_teacher_reproduces_mixture():
    gm = ring()
    ref, _ = gm.sample(4000, torch.Generator().manual_seed(1))
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2))
    x = ode_sample(gm, z, 32, "heun")
    floor_ref, _ = gm.sample(4000, torch.Generator().manual_seed(3))
    floor = sliced_wasserstein(floor_ref, ref)
    assert sliced_wasserstein(x, ref) < 1.5 * floor + 0.005
    x1 = ode_sample(gm, z, 1, "euler")  # one Euler step lands on the mean: far off
    assert sliced_wasserstein(x1, ref) > 10 * floor
    assert teacher_nfe(32, "heun") == 63 and teacher_nfe(4, "euler") == 4


def test_few_step_sampler_uses_given_noise():
    calls = []

    def gen(x, sigma, cond):
        calls.append(float(sigma[0]))
        return torch.zeros_like(x)

    z = torch.ones(3, 2)
    out = few_step_sample(gen, z, [80.0, 1.0, 0.1], renoise=[torch.ones(3, 2), 2 * torch.ones(3, 2)])
    assert calls == pytest.approx([80.0, 1.0, 0.1]) and torch.equal(out, torch.zeros(3, 2))
