"""Tests of distmatch.eval: metric values against closed forms and reference implementations, the cached
feature network on scikit-learn digits, speed helpers, and the honest "no Inception weights" path."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.linalg
import torch

from distmatch.errors import UserError
from distmatch.eval import features as features_mod
from distmatch.eval.features import FeatureNet, get_feature_net, random_shift, train_feature_net
from distmatch.eval.images import (class_coverage, frechet_distance, image_metrics, kid, prdc,
                                   tf1_resize)
from distmatch.eval.speed import measure_throughput, peak_memory_mb, peak_rss_mb
from distmatch.eval.vectors import energy_distance, mmd_rbf, mode_stats, sliced_wasserstein, vector_metrics
from distmatch.teachers.gmm import GaussianMixture


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine's 2 cores are shared; 2 threads under contention made small CNN steps ~30x slower.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ring(k: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    ang = torch.arange(k) * 2 * math.pi / k
    means = torch.stack([radius * ang.cos(), radius * ang.sin()], 1)
    return GaussianMixture(torch.ones(k), means, torch.full((k,), std ** 2))


# ------------------------------------------------------------------------------------------------- vectors

def test_swd_identical_and_shift():
    a = torch.randn(1000, 2, generator=gen(0))
    assert sliced_wasserstein(a, a.clone()) == pytest.approx(0.0, abs=1e-12)
    shifted = a + torch.tensor([1.0, 0.0])
    # W1 of each projection is exactly |δ·u|; E|cos θ| over the circle is 2/π.
    assert sliced_wasserstein(a, shifted, n_proj=4096) == pytest.approx(2 / math.pi, rel=0.05)


def test_swd_unequal_sizes_and_convergence():
    a = torch.randn(300, 3, generator=gen(1))
    b = torch.randn(500, 3, generator=gen(2))
    assert sliced_wasserstein(a, b + torch.tensor([0.0, 0.0, 2.0]), n_proj=2048) == pytest.approx(
        2 * 0.5, rel=0.1)  # E|u_z| on the sphere S² is 1/2
    small = np.mean([sliced_wasserstein(torch.randn(100, 2, generator=gen(s)),
                                        torch.randn(100, 2, generator=gen(100 + s))) for s in range(5)])
    large = np.mean([sliced_wasserstein(torch.randn(3000, 2, generator=gen(s)),
                                        torch.randn(3000, 2, generator=gen(100 + s))) for s in range(5)])
    assert large < small < 0.2 and large < 0.05


def test_mmd_and_energy_separate_distributions():
    a = torch.randn(1500, 2, generator=gen(3))
    b = torch.randn(1500, 2, generator=gen(4))
    c = torch.randn(1500, 2, generator=gen(5)) * 1.5 + 0.5
    same_mmd, diff_mmd = mmd_rbf(a, b), mmd_rbf(a, c)
    same_e, diff_e = energy_distance(a, b), energy_distance(a, c)
    # null fluctuations are ~2e-3 at N = 1500 (five kernels summed); the alternative gives ~0.2
    assert abs(same_mmd) < 1e-2 and diff_mmd > 0.1
    assert abs(same_e) < 1e-2 and diff_e > 0.15
    # more than 2000 points are subsampled: still finite and near zero
    big = torch.randn(2500, 2, generator=gen(6))
    assert abs(mmd_rbf(big, a)) < 1e-2


def test_mode_stats_on_ring():
    mix = ring()
    x, comp = mix.sample(4000, gen(7))
    exact = mode_stats(x, mix)
    assert exact["modes_covered"] == 1.0 and exact["off_mode"] < 0.01
    assert sum(exact["mode_histogram"]) == pytest.approx(1 - exact["off_mode"])
    collapsed = mode_stats(x[comp < 2], mix)
    assert collapsed["modes_covered"] == 0.25
    origin = mode_stats(torch.randn(500, 2, generator=gen(8)) * 0.05, mix)
    assert origin["off_mode"] > 0.99 and origin["modes_covered"] == 0.0


def test_vector_metrics_keys_and_values():
    mix = ring()
    x, _ = mix.sample(500, gen(9))
    ref, _ = mix.sample(600, gen(10))
    out = vector_metrics(x, ref, mix)
    assert set(out) == {"swd", "mmd", "energy", "modes_covered", "off_mode"}
    assert all(isinstance(v, float) for v in out.values())
    assert set(vector_metrics(x, ref)) == {"swd", "mmd", "energy"}
    # the ring shrunk to half its radius: every point 10 std off its mode; every distance must grow
    bad = vector_metrics(x * 0.5, ref, mix)
    assert 0 <= out["swd"] < 0.5 * bad["swd"] and out["mmd"] < bad["mmd"] and out["energy"] < bad["energy"]
    assert out["modes_covered"] == 1.0 and out["off_mode"] < 0.05 and bad["off_mode"] > 0.95


# ------------------------------------------------------------------------------------------ image metrics

def test_frechet_distance_closed_form():
    d = 4
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    l1, l2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = l1 @ l1.T + 0.5 * np.eye(d), l2 @ l2.T + 0.5 * np.eye(d)
    exact = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    a = rng.multivariate_normal(m1, s1, size=200_000)
    b = rng.multivariate_normal(m2, s2, size=200_000)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(exact, rel=0.02)


def test_frechet_distance_matches_scipy_on_features():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(size=(250, 32)) * 1.3 + 0.2
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b)) == pytest.approx(direct, rel=1e-5)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) + 0.5
    k = lambda x, y: (x @ y.T / 16 + 1) ** 3  # noqa: E731
    m = 200
    direct = ((k(a, a).sum() - np.trace(k(a, a))) / (m * (m - 1)) + (k(b, b).sum() - np.trace(k(b, b))) / (m * (m - 1))
              - 2 * k(a, b).mean())
    mean, std = kid(torch.from_numpy(a), torch.from_numpy(b), subsets=3, subset_size=1000)  # full set each time
    assert mean == pytest.approx(direct, rel=1e-9) and std is None  # no spread when every subset is the whole
    same, _ = kid(torch.from_numpy(a[:100]), torch.from_numpy(a[100:]), subsets=20, subset_size=50)
    assert abs(same) < 0.1 * direct


def test_prdc_values_and_reference_implementation():
    real = torch.randn(800, 8, generator=gen(11))
    same = prdc(real, torch.randn(800, 8, generator=gen(12)))
    assert same["precision"] > 0.6 and same["recall"] > 0.6 and same["coverage"] > 0.8
    centres = torch.randn(3, 8, generator=gen(13))
    collapsed = centres[torch.arange(800) % 3] + 0.01 * torch.randn(800, 8, generator=gen(14))
    bad = prdc(real, collapsed)
    assert bad["recall"] < 0.05 and bad["coverage"] < 0.1
    import prdc as ref  # the reference implementation (Naeem et al.), in the `test` extra: must not be skipped
    fake = torch.randn(600, 8, generator=gen(15)) * 1.2 + 0.3
    expected = ref.compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    got = prdc(real, fake, k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == pytest.approx(float(expected[key]), abs=2e-3)


def test_class_coverage_toy():
    preds = torch.tensor([0] * 50 + [1] * 40 + [2] * 9 + [3] * 1)  # 4 classes, uniform share 0.25
    out = class_coverage(preds, 4, requested=torch.tensor([0] * 50 + [1] * 50))
    assert out["class_histogram"] == pytest.approx([0.5, 0.4, 0.09, 0.01])
    assert out["classes_covered"] == 0.75  # threshold 0.25 * 0.25 = 0.0625: classes 0, 1 and 2
    assert out["class_accuracy"] == pytest.approx(0.9)
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert class_coverage(logits, 4)["classes_covered"] == 0.75


# ------------------------------------------------------------------------------------------ feature net

@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # pixel values 0..16 -> [-1, 1]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=gen(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


@pytest.fixture(scope="module")
def digits_net(digits, tmp_path_factory):
    import time

    cache = tmp_path_factory.mktemp("cache")
    x, y, _, _ = digits
    start = time.perf_counter()
    net = get_feature_net(x, y, "digits-test", cache_dir=cache)
    return net, cache, time.perf_counter() - start


def test_feature_net_accuracy_and_cache(digits, digits_net, monkeypatch):
    x, y, xt, yt = digits
    net, cache, seconds = digits_net
    with torch.inference_mode():
        acc = float((net.logits(xt).argmax(1) == yt).float().mean())
    print(f"digits feature net: held-out accuracy {acc:.4f}, trained in {seconds:.1f} s")
    assert acc > 0.9 and net.info["val_accuracy"] > 0.9
    names = sorted(p.name for p in cache.iterdir())
    assert names == ["digits-test-classifier.json", "digits-test-classifier.safetensors"]  # no temp files left

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network should have been loaded")

    monkeypatch.setattr(features_mod, "train_feature_net", no_training)
    again = get_feature_net(x, y, "digits-test", cache_dir=cache)
    assert again.info["cached"] is True
    with torch.inference_mode():
        assert torch.equal(again.features(xt[:20]), net.features(xt[:20]))


def test_image_metrics_on_digits(digits, digits_net):
    x, y, xt, yt = digits
    _, cache, _ = digits_net
    good = image_metrics(xt, x, y, "digits-test", sample_labels=yt, cache_dir=cache)
    assert good["feature_net"] == "classifier" and good["fd_name"] == "fd_classifier"
    assert good["classes_covered"] == 1.0 and good["class_accuracy"] > 0.9
    assert good["recall"] > 0.5 and 0.7 < good["diversity"] < 1.3
    ones = xt[yt == 1]
    bad = image_metrics(ones, x, y, "digits-test", cache_dir=cache)
    assert bad["classes_covered"] == pytest.approx(0.1) and bad["fd"] > 5 * good["fd"]
    assert bad["kid"] > good["kid"] and bad["coverage"] < good["coverage"] and bad["diversity"] < good["diversity"]
    assert "class_accuracy" not in bad


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (28, 1), (32, 3)])
def test_feature_net_shapes(size, channels):
    net = FeatureNet(channels, size, num_classes=10)
    x = torch.rand(2, channels, size, size) * 2 - 1
    assert net.features(x).shape == (2, 128) and net.logits(x).shape == (2, 10)


def test_autoencoder_kind_and_shift():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    net = train_feature_net(x, None, hparams={"steps": 3})
    assert net.kind == "autoencoder" and "val_accuracy" not in net.info
    assert net.reconstruct(x[:2]).shape == (2, 1, 8, 8)
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    shifted = random_shift(img.expand(50, -1, -1, -1), 1, gen(0))
    assert torch.equal(random_shift(img, 0, gen(0)), img)
    assert len({tuple(s.flatten().tolist()) for s in shifted}) > 1  # different offsets per image


def test_damaged_cache_is_retrained(tmp_path, monkeypatch):
    (tmp_path / "fp-autoencoder.json").write_text("{not json")
    (tmp_path / "fp-autoencoder.safetensors").write_bytes(b"garbage")
    quick = lambda x, labels, seed=0, progress=True: train_feature_net(x, labels, seed, {"steps": 2})  # noqa: E731
    monkeypatch.setattr(features_mod, "train_feature_net", quick)
    net = get_feature_net(torch.rand(16, 1, 8, 8), None, "fp", cache_dir=tmp_path)
    assert net.kind == "autoencoder" and "cached" not in net.info
    assert get_feature_net(torch.rand(16, 1, 8, 8), None, "fp", cache_dir=tmp_path).info["cached"] is True


def test_non_square_images_get_a_feature_network_and_it_is_cached(tmp_path, monkeypatch):
    """Data of 5x9 images train and distil; their evaluation must not stop at the feature network."""
    quick = lambda x, labels, seed=0, progress=True: train_feature_net(x, labels, seed, {"steps": 2})  # noqa: E731
    monkeypatch.setattr(features_mod, "train_feature_net", quick)
    x = torch.rand(16, 1, 5, 9) * 2 - 1
    net = get_feature_net(x, None, "wide", cache_dir=tmp_path)
    assert net.features(x).shape == (16, 128) and net.reconstruct(x[:2]).shape == (2, 1, 5, 9)
    assert get_feature_net(x, None, "wide", cache_dir=tmp_path).info["cached"] is True


def test_bad_fingerprint_is_user_error(tmp_path):
    with pytest.raises(UserError):
        get_feature_net(torch.zeros(4, 1, 8, 8), None, "../escape", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------ inception, speed

def test_inception_weights_are_named_or_absent_never_downloaded(tmp_path, monkeypatch):
    from distmatch.eval.inception import inception_path

    monkeypatch.delenv("DISTMATCH_INCEPTION", raising=False)
    assert inception_path() is None  # none named: the in-domain network is used
    with pytest.raises(UserError, match="no Inception weights file at .*absent.pt"):
        inception_path(tmp_path / "absent.pt")
    monkeypatch.setenv("DISTMATCH_INCEPTION", str(tmp_path / "gone.pt"))
    with pytest.raises(UserError, match="gone.pt"):
        inception_path()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated; the Inception file is TorchScript
def test_inception_metrics_through_torchmetrics_with_a_stand_in_network(tmp_path, monkeypatch):
    """FID / KID from torchmetrics on the stand-in's features agree with the Fréchet distance and KID computed by
    hand on the same features; identical sets score 0; the reference's features are cached per the images
    themselves (two references under one spec fingerprint, as a foreign model's "", are two entries)."""
    from types import SimpleNamespace

    from distmatch.eval.inception import InceptionFeatures, inception_metrics

    monkeypatch.setattr(InceptionFeatures, "num_features", 48)  # the stand-in's, where Inception has 2048

    class StandIn(torch.nn.Module):  # a tiny TorchScript network standing in for default_1.pt
        def forward(self, x):
            assert x.shape[1:] == (3, 299, 299)
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    path = tmp_path / "stand_in.pt"
    torch.jit.script(StandIn()).save(str(path))
    a = torch.rand(40, 1, 8, 8, generator=gen(16)) * 2 - 1
    b = (torch.rand(40, 1, 8, 8, generator=gen(18)) * 2 - 1) * 0.5 + 0.3
    ref = SimpleNamespace(x=a, labels=None, spec=SimpleNamespace(fingerprint="abc"))
    same = inception_metrics(a, ref, path, cache_dir=tmp_path)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and "stand_in.pt" in same["feature_net"]
    other = inception_metrics(b, ref, path, cache_dir=tmp_path)
    net = InceptionFeatures(path)
    fa, fb = net(a), net(b)
    assert other["fd"] == pytest.approx(frechet_distance(fb, fa), rel=1e-6) and other["fd"] > 1
    assert other["kid"] == pytest.approx(kid(fb, fa, subsets=100, subset_size=40)[0], rel=0.05)
    assert len(list(tmp_path.glob("inception-*.safetensors"))) == 1
    b_ref = SimpleNamespace(x=b, labels=None, spec=SimpleNamespace(fingerprint="abc"))
    assert inception_metrics(b, b_ref, path, cache_dir=tmp_path)["fd"] == pytest.approx(0.0, abs=1e-6)
    assert len(list(tmp_path.glob("inception-*.safetensors"))) == 2
    # RGBA (which stopped the stand-in's 3-channel assertion): its colours over black, so the alpha counts too
    rgba = torch.cat([a.expand(-1, 3, -1, -1), torch.ones_like(a)], 1)
    four = inception_metrics(rgba, SimpleNamespace(x=rgba, labels=None, spec=SimpleNamespace(fingerprint="4")),
                             path, cache_dir=tmp_path)
    assert four["fd"] == pytest.approx(0.0, abs=1e-6) and "RGBA composited over black" in four["feature_net"]
    torch.testing.assert_close(net(rgba), fa)  # opaque: the colours as they are
    clear = torch.cat([a.expand(-1, 3, -1, -1), -torch.ones_like(a)], 1)
    torch.testing.assert_close(net(clear), net(-torch.ones_like(a)))  # transparent: black
    img = torch.rand(1, 3, 5, 5, generator=gen(17))
    assert torch.allclose(tf1_resize(img, 5), img, atol=1e-6)  # same size: identity
    assert torch.allclose(tf1_resize(img, 10)[..., ::2, ::2], img, atol=1e-6)  # 2x: even pixels are the input


class ThreeFeatures(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


class NaNFeatures(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 2048), float("nan"))


class SameFeatures(torch.nn.Module):
    def forward(self, x):
        return torch.ones(x.shape[0], 2048)


class NotForImages(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1) @ torch.ones(3, 3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("net,why", [
    (ThreeFeatures, "3 features per image, not 2048"), (NaNFeatures, "NaN or infinite features"),
    (SameFeatures, "the same features for two different images"),
    (NotForImages, r"is not an Inception-v3 feature network \(")])
def test_a_torchscript_file_that_is_not_inception_is_refused(tmp_path, net, why):
    """Any other TorchScript file named as the Inception weights would be scored as if it were Inception, or end
    in a traceback (a constant network: a division by zero; NaN features: a crash in LAPACK)."""
    from distmatch.eval.inception import InceptionFeatures

    torch.jit.script(net()).save(str(tmp_path / "net.pt"))
    with pytest.raises(UserError, match=why):
        InceptionFeatures(tmp_path / "net.pt")


def _proc_kib(path: str, key: str) -> float | None:
    """A "key: N kB" line of a /proc file, in KiB (None where /proc does not say)."""
    try:
        with open(path) as f:
            return next(float(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def test_throughput_and_memory():
    calls = []

    def sample_fn(b):  # at least 5 ms a batch
        calls.append(b)
        time.sleep(0.005)
        return torch.randn(b, 16) @ torch.randn(16, 16)

    out = measure_throughput(sample_fn, n=100, batch=32, repeats=3)
    assert calls == [32] * (2 + 3 * 4)  # 2 warm-up calls, then 3 repeats of ceil(100 / 32) = 4 batches
    assert 0.005 <= out["seconds_per_batch"] < 0.1, out
    assert out["samples_per_s"] == pytest.approx(32 / out["seconds_per_batch"], rel=1e-6)
    assert out["batch"] == 32 and out["repeats"] == 3 and out["n"] == 128
    assert out["threads"] == torch.get_num_threads()
    rss, total = _proc_kib("/proc/self/status", "VmRSS"), _proc_kib("/proc/meminfo", "MemTotal")
    if rss is None or total is None or (torch.cuda.is_available() and torch.cuda.is_initialized()):
        pytest.skip("this system has no /proc, or the peak is CUDA's")
    assert rss / 2**10 <= peak_memory_mb() <= total / 2**10  # MiB: at least what is resident now, at most the RAM


def test_peak_rss_is_the_process_own_not_its_parents():
    """A small child of a large parent: Linux's ru_maxrss would give the parent's size (kept across exec), the
    child's own peak is what compare reports."""
    if peak_rss_mb() is None:
        pytest.skip("this system has no /proc/<pid>/status")
    ballast = torch.ones(400 * 2**20 // 4)  # 400 MiB written in this process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    try:
        time.sleep(0.7)
        own = peak_rss_mb(child.pid)
    finally:
        child.wait()
    assert own is not None and own < 100, own
    assert 400 <= peak_memory_mb() <= _proc_kib("/proc/meminfo", "MemTotal") / 2**10  # MiB: the ballast, < the RAM
    del ballast
