"""A diffusers model trained with EDM's preconditioning as a teacher (EDMEulerScheduler, EDMDPMSolverMultistep)."""
from __future__ import annotations

import math

from torch import nn

from ..errors import UserError
from ..parameterization import append_dims, edm_coefficients
from ..schedules import SIGMA_DATA, NoiseSchedule, karras_grid_1000
from .adapters import TeacherAdapter, call_with_labels


class PreconditionedAdapter(TeacherAdapter):
    """A diffusers model trained with EDM's preconditioning (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): its
    network F is called as F(c_in x_σ, c_noise), c_noise = ln(σ)/4, and D = c_skip x_σ + c_out F, with c_out negated
    for `prediction_type="v_prediction"`, as those schedulers do. Its levels: DMD2's Karras grid over its range."""

    convention = "precond"

    def __init__(self, net: nn.Module, sigma_min: float, sigma_max: float, sigma_data: float = SIGMA_DATA,
                 prediction_type: str = "epsilon", num_classes: int = 0, features: str | None = None):
        super().__init__(net, num_classes, features)
        if prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(f"an EDM-preconditioned model's prediction_type is epsilon or v_prediction, got "
                            f"{prediction_type!r}")
        if not (0 < sigma_min < sigma_max < math.inf and 0 < sigma_data < math.inf):
            raise UserError(f"an EDM-preconditioned model needs 0 < sigma_min < sigma_max and sigma_data > 0, got "
                            f"{sigma_min}, {sigma_max} and {sigma_data}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.prediction_type = prediction_type

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(karras_grid_1000(self.sigma_min, self.sigma_max), "ve")

    def denoise(self, x, sigma, cond):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        f = call_with_labels(self.net, (c_in * x).to(x.dtype), c_noise, cond).float()
        return c_skip * x + (-c_out if self.prediction_type == "v_prediction" else c_out) * f

    def config(self) -> dict:
        return {**super().config(), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data, "prediction_type": self.prediction_type}
