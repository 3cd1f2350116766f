"""Export of the students of diffusers models that no stock pipeline runs: the stock network and scheduler, and a
small pipeline.

Stock diffusers has no pixel-space pipeline that passes class labels to a UNet2DModel (DDPMPipeline passes none;
DiTPipeline needs a VAE), nor one that passes custom timesteps to its scheduler (a K-step student trained at levels
other than the K an LCMScheduler pins, student.timesteps), and its latent pipelines (LDMPipeline, DiTPipeline) do
not hand their generator to the scheduler's steps, so a seed would not give a latent student's images. So the
folder holds the student's network in the teacher's own class (`unet/` or `transformer/`), the scheduler that runs
its K trained levels, a latent model's autoencoder (`vae/`) and `pipeline.py`: the scheduler's loop, with
`class_labels=` and the trained timesteps, then the autoencoder's decoding, loaded with `trust_remote_code=True`.
Labels not given are drawn by the student's class weights (uniform for a diffusers teacher) with the caller's
generator, before the noise, as `distmatch sample` draws them, so the same seed gives the same images.
"""
from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt

# the head of every exported pipeline.py: its imports, and class labels drawn as distmatch sample draws them
PIPELINE_HEAD = '''import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


def draw_labels(weights, batch_size, generator):
    """Class labels drawn by the weights from the caller's generator, on its device; from a list of generators,
    sample i's label from generator i (as randn_tensor draws its noise)."""
    if isinstance(generator, list) and len(generator) == 1:  # as randn_tensor takes it: the one generator
        generator = generator[0]
    if isinstance(generator, list):
        return torch.cat([draw_labels(weights, 1, g) for g in generator])
    device = generator.device if generator is not None else "cpu"
    return torch.multinomial(weights.to(device), batch_size, replacement=True, generator=generator).cpu()
'''

PIPELINE = '''"""A distmatch few-step student as a diffusers pipeline (torch and diffusers only)."""
''' + PIPELINE_HEAD + '''

class DistmatchPipeline(DiffusionPipeline):
    """The scheduler's K steps over @NET@(x_t, t[, class_labels]): x̂_0 at each trained level (trained_timesteps
    when the scheduler would not pick them itself), re-noised to the next; a latent model's vae decodes them."""

    def __init__(self, @ARGS@, scheduler, VAE_ARGsample_shape=(1, 32, 32), trained_steps=1, class_names=(),
                 class_weights=(), trained_timesteps=(), owner=()):
        super().__init__()
        self.register_modules(@KWS@, scheduler=schedulerVAE_MODULE)
        self.register_to_config(sample_shape=list(sample_shape), trained_steps=trained_steps,
                                class_names=list(class_names), class_weights=list(class_weights),
                                trained_timesteps=list(trained_timesteps), owner=list(owner))

    def predict(self, x, t, cond):
        """The network's output at timestep t; of several students (msd), each class's through the one that
        owns it (owner[class])."""
        if not self.config.owner:
            return self.@NET@(x, t, **cond).sample
        labels = cond["class_labels"]
        who = torch.as_tensor(self.config.owner, device=labels.device)[labels]
        out = None
        for i in range(max(self.config.owner) + 1):
            mask = who == i
            if mask.any():
                y = getattr(self, f"@BASE@_{i}")(x[mask], t[mask], class_labels=labels[mask]).sample
                out = x.new_empty((len(x), *y.shape[1:])) if out is None else out
                out[mask] = y
        return out

    def labels(self, class_labels, batch_size, generator):
        """Class indices (or names) for the batch; drawn by the class weights when not given."""
        names = [str(c) for c in self.config.class_names]
        if class_labels is None:
            w = torch.tensor(self.config.class_weights or [1.0] * len(names), dtype=torch.float64)
            return draw_labels(w, batch_size, generator)
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if not torch.is_tensor(class_labels):
            class_labels = [names.index(str(c)) if isinstance(c, str) else int(c) for c in class_labels]
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size or not ((labels >= 0) & (labels < len(names))).all():
            raise ValueError(f"class_labels: {batch_size} indices in 0..{len(names) - 1} (or names), or one")
        return labels

    @torch.no_grad()
    def __call__(self, batch_size=1, num_inference_steps=None, generator=None, class_labels=None,
                 output_type="pil", return_dict=True):
        device = self.@NET@.device
        cond = {}
        if self.config.class_names:
            cond["class_labels"] = self.labels(class_labels, batch_size, generator).to(device)
        c = self.config.sample_shape[0]
        x = randn_tensor((batch_size, *self.config.sample_shape), generator=generator, device=device)
        steps = num_inference_steps or self.config.trained_steps
        if self.config.trained_timesteps:  # levels no K-step schedule holds: the student runs those or none
            if steps != self.config.trained_steps:
                raise ValueError(f"this student was trained at timesteps {list(self.config.trained_timesteps)}: "
                                 f"run it with num_inference_steps={self.config.trained_steps} (or leave it out)")
            self.scheduler.set_timesteps(timesteps=list(self.config.trained_timesteps), device=device)
        else:
            self.scheduler.set_timesteps(steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self.predict(x, t.expand(batch_size), cond)[:, :c]  # learned variance: cut
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
DECODE        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
'''


# What pipeline.py gains for a latent model: its vae as a component, and the vae's decoding after the last step
LATENT_CODE = {"VAE_ARG": "vae, ", "VAE_MODULE": ", vae=vae",
               "DECODE": "        x = self.vae.decode(x / (self.vae.config.scaling_factor or 1.0)\n"
                         "                            + (self.vae.config.get(\"shift_factor\") or 0.0)).sample\n"}


def pipeline_code(model_name: str, latent: bool, students: int = 0) -> str:
    """pipeline.py for a network kept under `model_name`, or for `students` of them (msd) kept under
    `model_name`_0, _1, ...; a latent model's takes its vae and decodes with it."""
    names = [f"{model_name}_{i}" for i in range(students)] if students else [model_name]
    code = (PIPELINE.replace("@ARGS@", ", ".join(names)).replace("@KWS@", ", ".join(f"{n}={n}" for n in names))
            .replace("@NET@", names[0]).replace("@BASE@", model_name))
    for mark, text in LATENT_CODE.items():
        code = code.replace(mark, text if latent else "")
    return code


def export_pipeline_student(model, networks: list, scheduler, folder: Path, record: dict, custom_timesteps: bool,
                            owner: list[int] = ()) -> None:
    """Write `folder`: the network under its teacher's component name (an msd student's several networks under
    name_0, name_1, ..., with the class -> student `owner` list), the scheduler, a latent model's vae, pipeline.py,
    and model_index.json naming them with the pipeline's config (sample shape, class names and frequencies, and
    the trained timesteps when the scheduler needs to be given them)."""
    import diffusers

    from .teachers.diffusers_folder import MODEL_FOLDER

    name = MODEL_FOLDER[type(networks[0]).__name__]
    names = [f"{name}_{i}" for i in range(len(networks))] if owner else [name]
    for net, n in zip(networks, names):
        net.save_pretrained(folder / n)
    scheduler.save_pretrained(folder / "scheduler")
    vae = {}
    if model.codec is not None:
        model.codec.vae.save_pretrained(folder / "vae")
        vae = {"vae": ["diffusers", model.codec.kind]}
    code = pipeline_code(name, model.codec is not None, len(networks) if owner else 0)
    ckpt.atomic_write_bytes(folder / "pipeline.py", code.encode())
    ckpt.atomic_write_json(folder / "model_index.json", {
        "_class_name": ["pipeline", "DistmatchPipeline"], "_diffusers_version": diffusers.__version__,
        **{n: ["diffusers", type(net).__name__] for net, n in zip(networks, names)},
        "scheduler": ["diffusers", type(scheduler).__name__], **vae,
        "sample_shape": list(model.shape), "trained_steps": record["steps"],
        "class_names": [str(c) for c in model.spec.class_names],
        "class_weights": [float(w) for w in model.class_weights],
        "trained_timesteps": record["timesteps"] if custom_timesteps else [], "owner": list(owner),
        "_distmatch": record})
