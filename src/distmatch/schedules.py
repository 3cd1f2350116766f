"""Noise levels, in the library's one time convention.

Convention (used everywhere inside distmatch): EDM / variance-exploding σ-space,
    x_σ = x_0 + σ ε,      ε ~ N(0, I),
and every network is seen through a denoiser D(x_σ, σ, cond) -> x̂_0.  σ = 0 is data, large σ is noise.
Teachers with other conventions (VP/DDPM, flow matching) are converted at their adapter and nowhere else.
Pure torch, no I/O.
"""
from __future__ import annotations

import torch

from .errors import UserError

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: n noise levels from sigma_max down to sigma_min (float64)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i * (lo - hi)) ** rho


def karras_grid_1000(sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """The 1000-point grid DMD2 indexes its noise levels on, ascending (index 0 = sigma_min)."""
    return karras_sigmas(1000, sigma_min, sigma_max, rho).flip(0)


def sample_grid_sigmas(n: int, lo: float, hi: float, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """σ drawn uniformly by index from the ascending 1000-point Karras grid, restricted to [lo, hi] as fractions.

    DMD2's distribution-matching loss uses lo=0.02, hi=0.98 (indices 20..980); its critic uses the whole grid.
    """
    grid = karras_grid_1000()
    i0, i1 = int(round(lo * 1000)), min(int(round(hi * 1000)), 999)
    idx = torch.randint(i0, i1 + 1, (n,), generator=generator)
    return grid[idx].float().to(device)


def sample_lognormal_sigmas(n: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """EDM training noise levels: ln σ ~ N(P_mean, P_std²)."""
    return (torch.randn(n, generator=generator) * p_std + p_mean).exp().to(device)


def student_sigmas(steps: int, sigma_max: float = SIGMA_MAX, sigma_top: float = 7.0, sigma_last: float = 0.35) -> list[float]:
    """The fixed noise levels a K-step student starts each of its steps from.

    Step 1 always starts from pure noise at sigma_max; the other K-1 levels are the last K-1 of K geometrically
    spaced levels from sigma_top down to sigma_last.  With the defaults (for σ_data = 0.5 data) a 4-step student
    uses [80, 2.58, 0.95, 0.35], close to DMD2's 4-step SDXL levels (t = 999, 749, 499, 249) rescaled to σ_data.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        return [float(sigma_max)]
    if not sigma_top > sigma_last > 0:
        raise UserError(f"a student's levels fall from student.sigma_top to student.sigma_last > 0, got "
                        f"{sigma_top} and {sigma_last}")
    ratio = (sigma_last / sigma_top) ** (1 / (steps - 1))
    return [float(sigma_max)] + [float(sigma_top * ratio ** k) for k in range(1, steps)]


FLOW_TOP = 1e7  # σ-space's stand-in for a flow model's pure-noise level s = 1 (σ = ∞); adapters read it as s = 1


def flow_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """A flow scheduler's time shift: s -> shift s / (1 + (shift - 1) s)."""
    return shift * s / (1 + (shift - 1) * s)


class NoiseSchedule:
    """The noise levels a teacher was trained on, in σ-space: a grid of its training levels (ascending), how a
    sample at its highest level is drawn from N(0, I), and the levels a K-step student starts its steps from.

    kind "ve": x = σ z (EDM, distmatch's own teachers; the grid is DMD2's 1000-point Karras grid);
    kind "vp": x = √(1+σ²) z, i.e. x_vp = z exactly as a DDPM pipeline starts (grid: σ of each training timestep);
    kind "flow": x = (1+σ) z, i.e. x_s = z at the top (grid: σ = s/(1-s) of each training s < 1, after the
    scheduler's `shift`; a student's first level is s = 1, held as σ = FLOW_TOP).
    """

    def __init__(self, grid: torch.Tensor, kind: str = "ve", shift: float = 1.0):
        if kind not in ("ve", "vp", "flow"):
            raise ValueError(f"unknown schedule kind {kind!r}")
        self.grid, self.kind, self.shift = grid.double(), kind, float(shift)

    @classmethod
    def karras(cls) -> "NoiseSchedule":
        return cls(karras_grid_1000(), "ve")

    @classmethod
    def flow(cls, num_train: int = 1000, shift: float = 1.0) -> "NoiseSchedule":
        s = flow_shift(torch.arange(1, num_train, dtype=torch.float64) / num_train, shift)
        return cls(s / (1 - s), "flow", shift)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "NoiseSchedule":
        if not cfg:
            return cls.karras()
        return cls(torch.tensor(cfg["grid"], dtype=torch.float64), cfg["kind"], cfg.get("shift", 1.0))

    def config(self) -> dict:
        if self.kind == "ve" and torch.equal(self.grid, karras_grid_1000()):
            return {}
        return {"kind": self.kind, "grid": self.grid.tolist(), **({"shift": self.shift} if self.kind == "flow" else {})}

    @property
    def sigma_min(self) -> float:
        return float(self.grid[0])

    @property
    def sigma_max(self) -> float:
        return float(self.grid[-1])

    def levels_up_to(self, sigma: float) -> torch.Tensor:
        """The training levels at or below σ (a student's first level): the levels its samples are noised to.
        DMD2's published students start at their teacher's top, so there this is the whole grid; a student started
        lower (student.start_sigma_max) is never scored above its start, where an ε teacher's and the critic's x̂_0
        are amplified noise and the DM gradient's draws disagree."""
        return self.grid[: max(2, int((self.grid <= sigma * (1 + 1e-6)).sum()))]

    def input_scale(self, sigma: float) -> float:
        """The factor that turns z ~ N(0, I) into a sample at the top level σ."""
        if self.kind == "vp":
            return float((1 + sigma ** 2) ** 0.5)
        return float(1 + sigma) if self.kind == "flow" else float(sigma)

    def given_levels(self, sigmas: list[float]) -> list[float]:
        """student.sigmas, refused outside the levels of a teacher that has ends (a DDPM-family network has no
        timestep beyond them; a σ-space denoiser was not trained there). A flow teacher's top is pure noise, s = 1."""
        if self.kind != "flow" and max(sigmas) > self.sigma_max * (1 + 1e-6):
            last = "its last training timestep" if self.kind == "vp" else "the top of the σ range it was trained on"
            raise UserError(f"student.sigmas go up to {max(sigmas):g}, above the teacher's top level σ = "
                            f"{self.sigma_max:.4g} ({last})")
        if self.kind != "flow" and min(sigmas) < self.sigma_min * (1 - 1e-6):
            first = "its first training timestep" if self.kind == "vp" else "the bottom of the σ range it learnt"
            raise UserError(f"student.sigmas go down to {min(sigmas):g}, below the teacher's lowest level σ = "
                            f"{self.sigma_min:.4g} ({first})")
        return list(sigmas)

    def off_timesteps(self, sigmas: list[float]) -> list[float]:
        """The levels of `sigmas` that lie between a DDPM-family teacher's training timesteps (none for others)."""
        if self.kind != "vp" or not sigmas:
            return []
        levels = torch.tensor(sigmas, dtype=torch.float64)
        nearest = self.grid[(self.grid[None] - levels[:, None]).abs().argmin(1)]
        return [v for v, grid in zip(sigmas, nearest.tolist()) if abs(grid - v) > 1e-4 * v]

    def _ve_levels(self, steps: int, sigma_top: float, sigma_last: float, start_max: float) -> list[float]:
        """A σ-space teacher's student: σ_max (an ε teacher's capped at start_max), then sigma_top .. sigma_last,
        all within the range the teacher was trained on."""
        top = min(self.sigma_max, start_max) if start_max else self.sigma_max
        levels = student_sigmas(steps, top, sigma_top, sigma_last)
        if steps > 1 and not (levels[0] > levels[1] and levels[-1] >= self.sigma_min * (1 - 1e-6)):
            raise UserError(f"a {steps}-step student's default levels {[round(v, 4) for v in levels]} do not fall "
                            f"within the teacher's σ range [{self.sigma_min:.4g}, {top:.4g}]: give student.sigmas "
                            "(or student.sigma_top and student.sigma_last) inside it")
        return levels

    def timestep_levels(self, timesteps: list[int]) -> list[float]:
        """σ of a DDPM-family teacher's training timesteps (student.timesteps; the grid holds σ(t) at index t)."""
        if self.kind != "vp":
            raise UserError("student.timesteps names a DDPM-family teacher's training timesteps; this teacher has "
                            "none (give student.sigmas)")
        if max(timesteps) >= len(self.grid):
            raise UserError(f"student.timesteps go up to {max(timesteps)}, but the teacher was trained on timesteps "
                            f"0 to {len(self.grid) - 1}")
        return [float(self.grid[t]) for t in timesteps]

    def student_levels(self, steps: int, sigma_top: float, sigma_last: float, start_max: float = 0.0,
                       flow_terminal: float = 0.0) -> list[float]:
        """A K-step student's levels, the ones an exported scheduler runs. VE: σ_max (or start_max when lower),
        then geometric from sigma_top to sigma_last; VP: the timesteps a consistency-style scheduler pins for K
        steps, (i+1)·(T//K) - 1 for i = K-1..0 (999, 749, 499, 249 for K = 4 of 1000), where T counts the training
        levels with σ <= start_max when that is set (all of them otherwise); flow: a flow scheduler's K levels
        (evenly spaced in time from s = 1 to its lowest training s, each shifted), or with `flow_terminal` stretched
        to end at its shift."""
        if self.kind == "ve":
            return self._ve_levels(steps, sigma_top, sigma_last, start_max)
        if self.kind == "vp":
            if steps > len(self.grid):
                raise UserError(f"a {steps}-step student needs {steps} of its teacher's training timesteps; it was "
                                f"trained on {len(self.grid)}")
            T = max(steps, int((self.grid <= start_max).sum())) if start_max else len(self.grid)
            c = T // steps
            return [float(self.grid[(i + 1) * c - 1]) for i in reversed(range(steps))]
        s_min = float(self.grid[0] / (1 + self.grid[0]))
        s = flow_shift(torch.linspace(1.0, s_min, steps, dtype=torch.float64), self.shift)
        if steps > 1 and flow_terminal > 0:  # diffusers' shift_terminal: 1 - s scaled to end at the terminal level
            end = float(flow_shift(torch.tensor(float(flow_terminal), dtype=torch.float64), self.shift))
            s = 1 - (1 - s) * (1 - end) / (1 - s[-1])
        return [FLOW_TOP if v >= 1 else float(v / (1 - v)) for v in s]
