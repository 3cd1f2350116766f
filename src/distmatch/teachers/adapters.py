"""A user's network seen as the library's denoiser D(x_σ, σ, cond) -> x̂_0 (the σ-space boundary).

Every foreign convention is converted here and nowhere else. `TeacherAdapter` holds the user's network and, when
a GAN head needs them, the output of one named sub-module (the network's bottleneck) as the critic's features.
Subclasses say how σ-space maps to the network's inputs and its prediction back to x̂_0:
    EDMAdapter   the network already is a σ-space denoiser (it returns x̂_0, or ε with x̂_0 = x - σ ε̂)
    VPAdapter    a DDPM-style network on x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε = x_σ / √(1+σ²), σ(t) = √((1-ᾱ_t)/ᾱ_t)
    FlowAdapter  a flow-matching network predicting the velocity on x_s = (1-s) x_0 + s ε = x_σ / (1+σ), σ = s/(1-s)
    ScoreAdapter a variance-exploding score network (score SDE's NCSN++) on x'_σ' = x'_0 + σ' ε, data x' in [0, 1]
    PreconditionedAdapter (preconditioned.py) a network trained with EDM's preconditioning, F(c_in x_σ, ln(σ)/4)
"""
from __future__ import annotations

import inspect
import json
import math
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UserError
from ..parameterization import append_dims
from ..schedules import FLOW_TOP, SIGMA_MAX, SIGMA_MIN, NoiseSchedule, karras_grid_1000
from .features import as_map, bottleneck, check_features


AUTO = "auto"  # features: find the network's bottleneck (features.bottleneck)


class TeacherAdapter(nn.Module):
    """D(x_σ, σ, cond) over a user's network `net`; `features` names the sub-module whose output a GAN head reads."""

    convention = "?"
    fixed: tuple[str, ...] = ()  # parameters the user's network keeps fixed; its students and critics keep them too

    def __init__(self, net: nn.Module, num_classes: int = 0, features: str | None = None):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.features = features
        self.feature_dim, self.feature_size = 0, None
        if features not in (None, AUTO):
            try:
                net.get_submodule(features)
            except AttributeError:
                raise UserError(f"the network has no sub-module '{features}' to read GAN features from") from None

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        raise NotImplementedError

    def schedule(self) -> NoiseSchedule:
        """The levels the network was trained on (an EDM network: DMD2's Karras grid)."""
        return NoiseSchedule.karras()

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        if not return_features:
            return self.denoise(x, sigma.float(), cond)
        with self._capture() as seen:
            x0 = self.denoise(x, sigma.float(), cond)
        if not seen:
            raise UserError(f"the sub-module '{self.features}' named for the GAN's features did not run in the "
                            "network's forward: name one that does with wrap_teacher(..., features=...)")
        return x0, seen[0]

    @contextmanager
    def _capture(self):
        if self.features is None:
            raise UserError("a GAN head needs the critic's features: name the network's bottleneck with "
                            "wrap_teacher(..., features='<sub-module>') or turn the method's GAN off")
        seen = []
        hook = self.net.get_submodule(self.features).register_forward_hook(
            lambda _m, _i, out: seen.append(as_map(out[0] if isinstance(out, (tuple, list)) else out)))
        try:
            yield seen
        finally:
            hook.remove()

    def probe(self, shape) -> None:
        """Run the network once on two samples (zeros and noise): its prediction must have the sample's shape, and
        the GAN head learns the features' channels and size (features="auto": first find the network's
        bottleneck); features that are the same for both samples do not see the sample and are refused."""
        p = next(self.parameters(), None)
        x = torch.zeros((2,) + tuple(shape), device=p.device if p is not None else "cpu")
        x[1] = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(x.device)
        # the highest label: a label table smaller than num_classes fails here, not in the first sampling
        cond = torch.full((2,), self.num_classes - 1, dtype=torch.long, device=x.device) if self.num_classes else None
        sigma = torch.ones(2, device=x.device)
        if self.features == AUTO:
            self.features = bottleneck(self.net, lambda: self(x, sigma, cond), shape)
        try:
            with torch.no_grad():
                out = self(x, sigma, cond, return_features=self.features is not None)
        except UserError:
            raise
        except Exception as e:  # any failure of the user's network is named in one line
            why = (str(e).splitlines() or [""])[0]
            raise UserError(f"the network fails on samples of shape {tuple(shape)}"
                            f"{' with label ' + str(self.num_classes - 1) if self.num_classes else ''}: "
                            f"{type(e).__name__}: {why}") from None
        f = out[1] if self.features is not None else None
        if f is not None:
            check_features(self.features, f)
            self.feature_dim = int(f.shape[1])
            self.feature_size = tuple(f.shape[2:]) if f.ndim == 4 else None
        self._check_finite_on_its_levels(x[:1], None if cond is None else cond[:1])

    def _check_finite_on_its_levels(self, x, cond, count: int = 5) -> None:
        """Samplers run a teacher from its highest training level to its lowest, and distillation calls it at any
        level between: a network that is not finite at its ends (a log(t) time embedding fed t = 0) or at one of
        `count` levels spread between them is refused now, not met as NaN samples or a "diverged" run later."""
        grid = self.schedule().grid
        sigma = grid[torch.linspace(0, len(grid) - 1, count).round().long()].float().to(x.device)
        with torch.no_grad():
            x0 = self(x.repeat(count, *[1] * (x.ndim - 1)), sigma, None if cond is None else cond.repeat(count))
        bad = [i for i in range(count) if not torch.isfinite(x0[i]).all()]
        if bad:
            where = {0: "the lowest of", count - 1: "the highest of"}.get(bad[0], "one of")
            raise UserError(f"the network returns non-finite values at σ = {sigma[bad[0]].item():.4g}, {where} the "
                            "levels it was trained on, where distmatch's samplers and distillation call it")

    def config(self) -> dict:
        """What rebuilds this adapter around a fresh copy of the network: for a diffusers model its class and
        config ("diffusers"), for any other module only its class's name (the user supplies an instance)."""
        cls = type(self.net)
        out = {"kind": "external", "convention": self.convention, "class": f"{cls.__module__}.{cls.__qualname__}",
               "num_classes": self.num_classes, "features": self.features}
        if is_diffusers_model(self.net):
            config = init_config(cls, self.net.config)
            out.update(kind="diffusers", diffusers_class=cls.__name__, net_config=json.loads(json.dumps(config)))
        return out


class EDMAdapter(TeacherAdapter):
    """A network that is already a σ-space denoiser, called as net(x_σ, σ[, cond]) and returning x̂_0
    (`prediction="x0"`) or the noise ε̂ (`prediction="epsilon"`, x̂_0 = x_σ - σ ε̂), trained on σ in
    [sigma_min, sigma_max] (EDM's 0.002 and 80, for data of std 0.5)."""

    convention = "edm"

    def __init__(self, net: nn.Module, prediction: str = "x0", num_classes: int = 0, features: str | None = None,
                 sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        super().__init__(net, num_classes, features)
        if prediction not in ("x0", "epsilon"):
            raise UserError(f"an EDM-space network predicts x0 or epsilon, got prediction={prediction!r}")
        if not 0 < sigma_min < sigma_max < math.inf:
            raise UserError(f"an EDM-space network's levels need 0 < sigma_min < sigma_max, got {sigma_min} and "
                            f"{sigma_max}")
        self.prediction, self.sigma_min, self.sigma_max = prediction, float(sigma_min), float(sigma_max)

    def schedule(self) -> NoiseSchedule:
        """DMD2's 1000-point Karras grid over the network's own range."""
        return NoiseSchedule(karras_grid_1000(self.sigma_min, self.sigma_max), "ve")

    def denoise(self, x, sigma, cond):
        out = call_with_labels(self.net, x, sigma, cond).float()
        return out if self.prediction == "x0" else x - append_dims(sigma, x.ndim) * out

    def config(self) -> dict:
        return {**super().config(), "prediction": self.prediction, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max}


class ScoreAdapter(TeacherAdapter):
    """A variance-exploding score network (score SDE's NCSN++, diffusers' ScoreSdeVeScheduler) called as
    net(x'_σ', σ') on x'_σ' = x'_0 + σ' ε and returning the score ∇log p ≈ -ε/σ', so x̂'_0 = x' + σ'² s. Its data x'
    lie in `data_range` ([0, 1] for score SDE's VE models), distmatch's [-1, 1] by x' = a x + b, a = (hi-lo)/2,
    b = (hi+lo)/2; in VE that is x'_σ' = a x_σ + b with σ' = a σ. It was trained on σ' log-uniform in
    [sigma_min, sigma_max], so its levels are a geometric grid of 1000 over that range."""

    convention = "score"
    prediction = "score"  # -ε/σ: its x̂_0 carries ε̂'s error times σ, as an ε teacher's does

    def __init__(self, net: nn.Module, sigma_min: float, sigma_max: float, data_range=(0.0, 1.0),
                 num_classes: int = 0, features: str | None = None):
        super().__init__(net, num_classes, features)
        lo, hi = (float(v) for v in data_range)
        if not (0 < sigma_min < sigma_max < math.inf and lo < hi):
            raise UserError(f"a score network needs 0 < sigma_min < sigma_max and a data range lo < hi, got "
                            f"{sigma_min}, {sigma_max} and {data_range}")
        self.sigma_min, self.sigma_max, self.data_range = float(sigma_min), float(sigma_max), (lo, hi)
        self.a, self.b = (hi - lo) / 2, (hi + lo) / 2

    def schedule(self) -> NoiseSchedule:
        grid = torch.logspace(math.log10(self.sigma_min), math.log10(self.sigma_max), 1000, dtype=torch.float64)
        return NoiseSchedule(grid / self.a, "ve")

    def denoise(self, x, sigma, cond):
        s = self.a * append_dims(sigma, x.ndim)
        x_net = self.a * x + self.b
        score = call_with_labels(self.net, x_net, self.a * sigma, cond).float()
        return (x_net + s ** 2 * score - self.b) / self.a

    def config(self) -> dict:
        return {**super().config(), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "data_range": list(self.data_range)}


def kept_fixed(net: nn.Module) -> tuple[str, ...]:
    """Parameters frozen among trainable ones are the network's own constants (random Fourier features, say): its
    students keep them (TeacherAdapter.fixed). A network frozen whole is a frozen teacher, nothing more."""
    fixed = [name for name, p in net.named_parameters() if not p.requires_grad]
    return tuple(f"net.{name}" for name in fixed) if len(fixed) < len(list(net.parameters())) else ()


def network_output(out) -> torch.Tensor:
    """A tensor from what a network returned (diffusers models return an output object with `.sample`)."""
    if hasattr(out, "sample"):
        return out.sample
    out = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the network returned a {type(out).__name__}; a teacher's network returns its prediction as "
                        "a tensor (or a tuple or diffusers output holding it first)")
    return out


def prediction_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An image network's prediction for x: its output, or the first C channels of a 2C-channel output (a network
    that also learns its variance, as improved DDPM, ADM and DiT do; diffusers' schedulers split it the same way)."""
    if x.ndim == 4 and out.ndim == 4 and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
        return out[:, : x.shape[1]]
    return out


def call_with_labels(net: nn.Module, x, t, cond):
    """net(x, t) or, with labels, net(x, t, class_labels=...) for diffusers models and net(x, t, cond) otherwise.
    The network gets its own copies of x and t: one that scales its inputs in place must not change the caller's."""
    x_in, t_in = x.clone(), t.clone()
    if cond is None:
        out = net(x_in, t_in)
    elif "class_labels" in inspect.signature(net.forward).parameters:
        out = net(x_in, t_in, class_labels=cond)
    else:
        out = net(x_in, t_in, cond)
    pred = prediction_of(network_output(out), x)
    if pred.shape != x.shape:  # a broadcasting shape (one channel, a scalar) would be taken in silence below
        raise UserError(f"the network's prediction has shape {tuple(pred.shape)} for {len(x)} samples of shape "
                        f"{tuple(x.shape[1:])}; a teacher predicts one value per sample value (an image network "
                        "may add as many channels again for a learned variance)")
    return pred


VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def finite_top(a: torch.Tensor) -> torch.Tensor:
    """A zero-terminal-SNR table (ᾱ_T = 0, the 2^-24 that diffusers' Euler schedulers put there, or anything as
    small: a cosine table without its β clipping ends at 4e-33, σ = 2e16, where float32 cancels) ends at σ = ∞ or
    near it. Its top level becomes the log-linear continuation of the two below it, a finite σ (about 3e4 for a
    rescaled linear table) at which a v- or x0-prediction network's x̂_0 differs from its ᾱ_T = 0 value by √ᾱ_T x_t.
    Any other last value is the table's own, checked as the rest are."""
    if a.ndim == 1 and len(a) >= 3 and 0 < a[-2] < a[-3] < 1 and 0 <= a[-1] <= 2.0 ** -24:
        a = a.clone()
        a[-1] = a[-2] ** 2 / a[-3]
    return a


class VPAdapter(TeacherAdapter):
    """A network called as net(x_t, t[, labels]) on the variance-preserving x_t of a T-step schedule ᾱ_0..ᾱ_{T-1},
    predicting ε (`epsilon`), v (`v_prediction`) or x_0 (`sample`), as diffusers' DDPMScheduler defines them.
    A σ between two timesteps gives a fractional t, interpolated in log σ (`timesteps="continuous"`), or the
    nearest integer t (`"discrete"`, for a time embedding that is a lookup table); the input is scaled by the
    exact σ either way."""

    convention = "vp"

    def __init__(self, net: nn.Module, alphas_cumprod, prediction: str = "epsilon", timesteps: str = "continuous",
                 num_classes: int = 0, features: str | None = None):
        super().__init__(net, num_classes, features)
        if prediction not in VP_PREDICTIONS:
            raise UserError(f"a DDPM-style network predicts one of {', '.join(VP_PREDICTIONS)}, got {prediction!r}")
        if timesteps not in ("continuous", "discrete"):
            raise UserError(f"timesteps must be continuous or discrete, got {timesteps!r}")
        try:
            a = finite_top(torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"alphas_cumprod must be a table of numbers (a scheduler's alphas_cumprod), got "
                            f"{type(alphas_cumprod).__name__}") from None
        if a.ndim != 1 or len(a) < 2 or not ((a > 0) & (a < 1)).all() or not (a[1:] < a[:-1]).all():
            raise UserError("alphas_cumprod must be a falling 1-D table of values in (0, 1), one per timestep")
        self.prediction, self.timesteps = prediction, timesteps
        self.register_buffer("log_sigmas", (((1 - a) / a).sqrt()).log(), persistent=False)
        self.register_buffer("alphas_cumprod", a, persistent=False)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.log_sigmas.exp(), "vp")

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ -> the network's t: log-σ interpolation between the two neighbouring timesteps, or the nearest one."""
        log_sigma, ls = sigma.double().log(), self.log_sigmas
        if self.timesteps == "discrete":
            return (log_sigma[:, None] - ls[None]).abs().argmin(1)
        hi = torch.searchsorted(ls, log_sigma).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return (lo + w).float()

    def denoise(self, x, sigma, cond):
        s = append_dims(sigma, x.ndim)
        root = (1 + s ** 2).sqrt()
        out = call_with_labels(self.net, (x / root).to(x.dtype), self.timestep(sigma).to(x.device), cond).float()
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return x / (1 + s ** 2) - s / root * out
        return out

    def config(self) -> dict:
        return {**super().config(), "prediction": self.prediction, "timesteps": self.timesteps,
                "alphas_cumprod": self.alphas_cumprod.tolist()}


def is_diffusers_model(net: nn.Module) -> bool:
    return type(net).__module__.startswith("diffusers.") and hasattr(net, "config")


def init_config(cls, config) -> dict:
    """The keys of a diffusers model's config that its class takes: not its load path ("_name_or_path"), nor keys
    a former class of the model left in it (a Hub DiT's Transformer2DModel keys), which diffusers warns of."""
    params = inspect.signature(cls.__init__).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in config.items() if not k.startswith("_") and (open_ended or k in params)}


def diffusers_network(cfg: dict) -> nn.Module:
    """A fresh diffusers model of the class and config an adapter's config names (weights to be loaded)."""
    import diffusers

    cls = getattr(diffusers, cfg["diffusers_class"], None)
    if cls is None:
        raise UserError(f"diffusers has no model class {cfg['diffusers_class']!r} (installed: {diffusers.__version__})")
    return cls.from_config(init_config(cls, cfg["net_config"]))


class FlowAdapter(TeacherAdapter):
    """A rectified-flow network called as net(x_s, t[, labels]) with x_s = (1-s) x_0 + s ε and t = `time_scale` · s
    (1000: diffusers' convention; 1: models that take s itself), predicting the velocity v = ε - x_0, so
    x̂_0 = x_s - s v. Its training levels are a flow scheduler's: s = t/T for t = 1..T, after `shift`."""

    convention = "flow"

    def __init__(self, net: nn.Module, num_train: int = 1000, shift: float = 1.0, time_scale: float = 1000.0,
                 num_classes: int = 0, features: str | None = None):
        super().__init__(net, num_classes, features)
        if not (num_train >= 2 and 0 < shift < math.inf and 0 < time_scale < math.inf):
            raise UserError(f"a flow teacher needs num_train_timesteps >= 2 and finite shift > 0 and time_scale > 0, "
                            f"got {num_train}, {shift} and {time_scale}")
        self.num_train, self.shift, self.time_scale = int(num_train), float(shift), float(time_scale)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.flow(self.num_train, self.shift)

    def denoise(self, x, sigma, cond):
        sig = sigma.double()
        s = torch.where(sig >= FLOW_TOP, torch.ones_like(sig), sig / (1 + sig))  # FLOW_TOP is pure noise, s = 1
        x_s = (x.double() / append_dims(1 + sig, x.ndim)).to(x.dtype)
        v = call_with_labels(self.net, x_s, (s * self.time_scale).float(), cond).float()
        return x_s.float() - append_dims(s, x.ndim).float() * v

    def config(self) -> dict:
        return {**super().config(), "num_train": self.num_train, "shift": self.shift, "time_scale": self.time_scale}


def rebuild_adapter(cfg: dict, net: nn.Module) -> TeacherAdapter:
    """The adapter described by `cfg` (TeacherAdapter.config) around `net`."""
    if cfg.get("convention") == "edm":
        return EDMAdapter(net, cfg.get("prediction", "x0"), cfg.get("num_classes", 0), cfg.get("features"),
                          cfg.get("sigma_min", SIGMA_MIN), cfg.get("sigma_max", SIGMA_MAX))
    if cfg.get("convention") == "score":
        return ScoreAdapter(net, cfg["sigma_min"], cfg["sigma_max"], cfg["data_range"], cfg.get("num_classes", 0),
                            cfg.get("features"))
    if cfg.get("convention") == "flow":
        return FlowAdapter(net, cfg["num_train"], cfg["shift"], cfg["time_scale"], cfg.get("num_classes", 0),
                           cfg.get("features"))
    if cfg.get("convention") == "precond":
        from .preconditioned import PreconditionedAdapter

        return PreconditionedAdapter(net, cfg["sigma_min"], cfg["sigma_max"], cfg["sigma_data"],
                                     cfg["prediction_type"], cfg.get("num_classes", 0), cfg.get("features"))
    if cfg.get("convention") == "vp":
        return VPAdapter(net, cfg["alphas_cumprod"], cfg["prediction"], cfg["timesteps"], cfg.get("num_classes", 0),
                         cfg.get("features"))
    raise UserError(f"unknown teacher convention {cfg.get('convention')!r} in a saved model")
