"""Export of students of distmatch's own U-Net: a diffusers folder with a self-contained custom pipeline.

Stock diffusers has no class for distmatch's U-Net or its few-step sampler, so the folder carries their code:
`student/distmatch_student.py` (the network, written out from distmatch's own modules, and a diffusers ModelMixin
around it) and `pipeline.py` (the K-step sampler, class labels included). Loading it runs that code, so diffusers
asks for `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; nothing of distmatch is imported.
The same seed gives the same images as `distmatch sample --seed`.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

from . import checkpoint as ckpt
from . import parameterization
from .errors import UserError
from .export_classes import PIPELINE_HEAD
from .networks import embed, unet
from .teachers import edm

STUDENT_MODULE = "distmatch_student"

STUDENT_CLASS = '''

class DistmatchStudent(ModelMixin, ConfigMixin):
    """A distmatch K-step student: an EDM-preconditioned U-Net G(x_σ, σ, labels) and the levels it was trained at;
    a multi-student (msd) one holds a U-Net per group of classes (`networks`: their channels, blocks, attention
    and dropout) and sends each class to the one that owns it (`owner`: class -> student)."""

    @register_to_config
    def __init__(self, in_channels=1, size=(8, 8), channels=(32, 64, 64), blocks=1, attention=False, dropout=0.0,
                 num_classes=0, class_weights=(), sigma_data=0.5, sigmas=(80.0,), move="renoise", owner=(),
                 networks=()):
        super().__init__()

        def denoiser(channels, blocks, attention, dropout):
            backbone = UNetBackbone(in_channels, tuple(size), tuple(channels), blocks, attention, dropout, num_classes)
            return EDMDenoiser(backbone, sigma_data)

        if owner:
            self.students = nn.ModuleList(denoiser(**net) for net in networks)
        else:
            self.denoiser = denoiser(channels, blocks, attention, dropout)

    def forward(self, x, sigma, labels=None):
        if not self.config.owner:
            return self.denoiser(x, sigma, labels)
        who = torch.as_tensor(self.config.owner, device=labels.device)[labels]
        out = torch.empty_like(x)
        for i, student in enumerate(self.students):
            mask = who == i
            if mask.any():
                out[mask] = student(x[mask], sigma[mask], labels[mask])
        return out
'''

PIPELINE = '''"""A distmatch few-step student as a diffusers pipeline (self-contained: torch and diffusers only)."""
''' + PIPELINE_HEAD + '''

class DistmatchStudentPipeline(DiffusionPipeline):
    """x̂_0 = G(σ_0 z); then x̂_0 = G(x_k, σ_k) for k = 1..K-1 (K = num_inference_steps <= trained K), with
    x_k = x̂_0 + σ_k ε_k (fresh noise) or, for a student trained DDIM-like (move = "ddim"), x̂_0 + σ_k ε̂ with its own
    predicted noise ε̂ = (x_{k-1} - x̂_0) / σ_{k-1}."""

    def __init__(self, student):
        super().__init__()
        self.register_modules(student=student)

    @torch.no_grad()
    def __call__(self, batch_size=1, num_inference_steps=None, generator=None, class_labels=None,
                 output_type="pil", return_dict=True):
        cfg = self.student.config
        sigmas = list(cfg.sigmas)[: num_inference_steps or len(cfg.sigmas)]
        device = self.student.device
        labels = None
        if cfg.num_classes:  # drawn as in the data unless given, first, as distmatch sample draws them
            if class_labels is None:
                weights = torch.tensor(cfg.class_weights or [1.0] * cfg.num_classes, dtype=torch.float64)
                class_labels = draw_labels(weights, batch_size, generator)
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).expand(batch_size).to(device)
        shape = (batch_size, cfg.in_channels, *cfg.size)
        z = randn_tensor(shape, generator=generator, device=device)
        ddim = cfg.move == "ddim"
        noise = [None if ddim else randn_tensor(shape, generator=generator, device=device) for _ in sigmas[1:]]
        x = z * sigmas[0]
        x0 = self.student(x, torch.full((batch_size,), sigmas[0], device=device), labels)
        for eps, before, s in zip(noise, sigmas, sigmas[1:]):
            x = x0 + s * ((x - x0) / before if ddim else eps)
            x0 = self.student(x, torch.full((batch_size,), s, device=device), labels)
        images = (x0 / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
'''


def _body(module) -> str:
    """A module's source without its docstring and package-relative imports."""
    src = inspect.getsource(module)
    src = re.sub(r'^""".*?"""\n', "", src, count=1, flags=re.S)
    return "\n".join(line for line in src.splitlines()
                     if not line.startswith(("from __future__", "from .", "from ..")))


def student_module_source() -> str:
    """The network's code, from distmatch's own modules, and the diffusers class around it."""
    parts = ['"""A distmatch student network for diffusers (written out by distmatch export)."""',
             "import math\n\nimport torch\nfrom torch import nn\nfrom torch.nn import functional as F\n"
             "from diffusers import ConfigMixin, ModelMixin\nfrom diffusers.configuration_utils import "
             "register_to_config\n\nSIGMA_DATA = 0.5",
             inspect.getsource(parameterization.append_dims), inspect.getsource(parameterization.edm_coefficients),
             _body(embed), _body(unet), _body(edm)]
    return "\n\n".join(parts) + STUDENT_CLASS


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(STUDENT_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_own_student(model, weights: dict, folder: Path, record: dict) -> None:
    """Write `folder` (a new, empty one): student/ with the network's code, config and weights; pipeline.py;
    model_index.json naming both, with the distillation record under "_distmatch"."""
    net = model.config["network"]
    if net.get("kind") != "unet":
        raise UserError(f"{model.path}: export writes image students of distmatch's U-Net or of a diffusers UNet; "
                        "this one is neither")
    import diffusers

    (folder / "student").mkdir(parents=True)
    code = folder / "student" / f"{STUDENT_MODULE}.py"
    ckpt.atomic_write_bytes(code, student_module_source().encode())
    cls = _load_module(code).DistmatchStudent
    c, h, w = model.spec.shape
    router = model.config.get("router", {})  # msd: a network per group of classes
    networks = [{"channels": list(n["channels"]), "blocks": n["blocks"], "attention": n["attention"],
                 "dropout": n["dropout"]} for n in router.get("networks", [])]
    student = cls(in_channels=c, size=[h, w], channels=list(net["channels"]), blocks=net["blocks"],
                  attention=net["attention"], dropout=net["dropout"], num_classes=model.num_classes,
                  class_weights=list(model.class_weights), sigma_data=model.config.get("sigma_data", 0.5),
                  sigmas=list(model.config["sigmas"]), move=model.config.get("move", "renoise"),
                  owner=list(router.get("owner", [])), networks=networks)
    student.load_state_dict(weights if router else {"denoiser." + k[len("gen."):]: v for k, v in weights.items()})
    student.save_pretrained(folder / "student")
    ckpt.atomic_write_bytes(folder / "pipeline.py", PIPELINE.encode())
    ckpt.atomic_write_json(folder / "model_index.json", {
        "_class_name": ["pipeline", "DistmatchStudentPipeline"], "_diffusers_version": diffusers.__version__,
        "student": [STUDENT_MODULE, "DistmatchStudent"], "_distmatch": record})
