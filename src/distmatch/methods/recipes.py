"""Named recipes: a published method plus levers measured to help it on some kind of data.

`--method NAME` always runs the method as published; `--recipe NAME` runs the method a recipe names with the
recipe's settings laid over the method's defaults (a user's --config and --set still win). Settings are keyed like
a method's DEFAULTS: by kind of data ("vector", "image"), for every K > 1 ("vector:K") and for one K ("vector:1").
A recipe that has no settings for a kind of data is refused there rather than silently run as the plain method.
A latent model's student (a teacher with an autoencoder) takes the image settings, then any keyed "latent".
The measured effect of each recipe is in bench/RESULTS.md ("Published methods and recipes").
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Recipe:
    method: str
    about: str           # what it adds to the method, one line
    settings: dict       # {kind or kind:K: {section: {key: value}}}
    effect: str = ""     # what it measured, one line
    epsilon_only: bool = False  # its levers act on an ε-predicting teacher's student only

    def kinds(self) -> list[str]:
        return sorted({k.split(":")[0] for k in self.settings} - {"latent"})

    def where(self) -> str:
        """Where it was measured, as a user reads it: 'vector data', '1-step students on image data'."""
        steps = {k.split(":")[1] for k in self.settings if ":" in k}
        if any(":" not in k for k in self.settings) or not steps:
            scope = ""
        else:
            scope = " and ".join(f"{s}-step" if s != "K" else "K-step" for s in sorted(steps)) + " students on "
        teachers = " of ε-predicting teachers" if self.epsilon_only else ""
        return f"{scope}{' and '.join(self.kinds())} data{teachers}"


# The regression on the teacher's ODE noise->sample pairs beside the DM loss (DMD's, dropped by DMD2), with the
# 1-step ODE warm-up DMD2 used for its 1-step SDXL student, and one critic per step of a K-step student.
_PER_STEP_CRITICS = {"student": {"critic_per_step": True}}
# An ε teacher's x̂_0 multiplies its error by √(1+σ²); a 1-step student keeps its own noise times its start.
# σ 1.7 is for pixels of std 0.5; latents, scaled to std 1 by their autoencoder's scaling_factor, start twice as high.
_LOW_START = {"student": {"start_sigma_max": 1.7}}
_LATENT_LOW_START = {"latent:1": {"student": {"start_sigma_max": 3.4}}}

RECIPES = {
    "dmd2+ode": Recipe(
        "dmd2", "dmd2 without GAN, plus the ODE regression (weight 0.25; 1 and last level 0.05 for K > 1), the 1-step "
        "ODE warm-up (first 25%) and one critic per step",
        {"vector": {"dmd2": {"gan": False, "ode_weight": 0.25}},
         "vector:1": {"dmd2": {"ode_init": 0.25}},
         "vector:K": {"dmd2": {"ode_weight": 1.0}, "student": {"critic_per_step": True, "sigma_last": 0.05}}},
        "1-step SWD x teacher 1.00-1.10 on the five 2-D presets, 1.20 on an 8-D mixture (dmd2 as published: "
        "0.97-2.50, 2.11); 4-step 0.87-1.07"),
    "dmd+warmup": Recipe(
        "dmd", "dmd plus the 1-step ODE warm-up (first 25%), dmd2's five critic updates per student update and one "
        "critic per step",
        {"vector": {"dmd": {"critic_ratio": 5}}, "vector:1": {"dmd": {"ode_init": 0.25}},
         "vector:K": _PER_STEP_CRITICS},
        "1-step SWD x teacher 0.99-1.06 on the five 2-D presets (dmd with five critic updates: 0.99-1.15; dmd as "
        "published, one: 1.11 / 1.46 on 8 / 25 Gaussians)"),
    "fdistill+ode": Recipe(
        "fdistill", "fdistill plus the ODE regression (weight 0.25), the 1-step ODE warm-up (first 25%) and one "
        "critic per step; its discriminator on the critic's features, as dmd2's, its ratio bins of equal shares",
        {"vector": {"fdistill": {"ode_weight": 0.25, "features": "critic", "bins_by": "index"}},
         "vector:1": {"fdistill": {"ode_init": 0.25}},
         "vector:K": _PER_STEP_CRITICS},
        "1-step SWD x teacher 0.99-1.14 on the five 2-D presets (fdistill as published: 0.91-2.46)"),
    "tdm+ode": Recipe(
        "tdm", "tdm with pseudo-Huber c = 1 per sample (DMD's push below one data unit) plus the ODE regression at "
        "weight 1; critic and student at one rate, both clipped, no weight decay; re-noised between steps",
        {"vector": {"tdm": {"huber_c": 1.0, "huber": "sample", "ode_weight": 1.0, "critic_rate": 1.0,
                            "clip_critic": True, "move": "renoise"}, "train": {"weight_decay": 0.0}}},
        "4-step SWD x teacher 0.81-1.12 on the five 2-D presets, 0.98 on an 8-D mixture (tdm before its authors' "
        "per-element loss and optimisers: 1.40-6.21, 3.41; as published: 1.41 / 6.78 on 8 / 25 Gaussians)"),
    "dmd2+low-start": Recipe(
        "dmd2", "dmd2 with a 1-step student of an ε-predicting teacher started at σ <= 1.7 (3.4 on a latent model's "
        "latents; its DM, critic and GAN levels stop there) instead of 14.62",
        {"image:1": _LOW_START} | _LATENT_LOW_START,
        "MNIST DDPM (linear β) FID x teacher 2.9x at 1000 iterations, 2.3x at 2000, two seeds each (as published: "
        "4.3-4.6x, 3.9x); 8x8 digits DDPMs, linear and cosine β: FD x teacher 1.8-5.5x, two seeds each (as "
        "published: 5.9-10.6x); a latent MNIST DDPM: 0.94-0.95x at 1000 iterations, two seeds, every kind of digit (at "
        "σ 1.7: 1.08-1.09x, mostly 1s; as published: 1.73-1.75x)", epsilon_only=True),
    # A teacher blind to some directions of its input (a LayerNorm hides offset and contrast) gives the DM
    # gradient and the GAN nothing to hold there; DMD's regression ties each noise to the teacher's own sample.
    "dmd2+low-start+ode": Recipe(
        "dmd2", "dmd2+low-start plus DMD's regression onto 1024 of the teacher's ODE pairs (weight 0.25) beside "
        "the DM loss and the GAN",
        {"image:1": _LOW_START | {"dmd2": {"ode_weight": 0.25, "ode_pairs": 1024}}} | _LATENT_LOW_START,
        "real MNIST DDPM, whose LayerNorm input hides offset and contrast: FID x teacher 3.3x at 1000 iterations, "
        "3.1x at 2000, two seeds each (dmd2+low-start: 5.4x, 6.5x, one seed; as published: 8.6x); a "
        "diffusers-trained MNIST DDPM: 4.1x, two seeds (dmd2+low-start: 3.6-3.7x)", epsilon_only=True),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}' (choose one of {', '.join(RECIPES)})")
    return RECIPES[name]


def recipe_settings(name: str, kind: str, steps: int, latent: bool = False) -> list[dict]:
    """The recipe's settings that apply to a K-step student on this kind of data (`latent`: a latent model's), in
    the order they are laid."""
    recipe = get_recipe(name)
    if kind not in recipe.kinds():
        raise UserError(f"recipe '{name}' is defined for {' and '.join(recipe.kinds())} data only (it was measured "
                        f"there); use --method {recipe.method} for {kind} data")
    s = recipe.settings
    layers = [s.get(kind, {}), s.get(f"{kind}:K", {}) if steps > 1 else {}, s.get(f"{kind}:{steps}", {})]
    if not any(layers):
        raise UserError(f"recipe '{name}' is defined for {recipe.where()} only (it was measured there); use "
                        f"--method {recipe.method} for a {steps}-step student")
    if latent:
        layers += [s.get("latent", {}), s.get("latent:K", {}) if steps > 1 else {}, s.get(f"latent:{steps}", {})]
    return layers
