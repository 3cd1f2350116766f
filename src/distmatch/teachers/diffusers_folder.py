"""A diffusers model folder as a teacher: a pipeline folder (`model_index.json`) or one holding `unet/` (or
`transformer/`) and `scheduler/`, read with `from_pretrained` from local disk only. A latent model (a `vae/`, an
AutoencoderKL, or `vqvae/`, a VQModel, beside its network) is distilled on its latents, with data encoded and
samples decoded by its autoencoder (latent.py).

A UNet2DModel or DiTTransformer2DModel with a DDPM-family scheduler (one with `alphas_cumprod`: DDPM, DDIM, Euler,
LCM, ...) becomes a VPAdapter with the scheduler's prediction type; a flow-matching one (FlowMatchEuler or
FlowMatchHeun, or UniPC / DPM-Solver on flow sigmas) a FlowAdapter with its shift; EDM's (EDMEuler,
EDMDPMSolverMultistep) a PreconditionedAdapter; ScoreSdeVeScheduler (NCSN++) a ScoreAdapter on [0, 1] images.
The sample shape comes from the model's config; a class-conditional model (`num_class_embeds`; a DiT always is)
keeps its classes; the GAN head reads the UNet's `mid_block` or the DiT's middle block.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data.spec import DataSpec
from ..errors import UserError

# model class -> the config key of its class count (a DiT is always class-conditional)
CLASS_COUNT = {"UNet2DModel": "num_class_embeds", "DiTTransformer2DModel": "num_embeds_ada_norm"}
SUPPORTED_MODELS = tuple(CLASS_COUNT)
MODEL_FOLDER = {"UNet2DModel": "unet", "DiTTransformer2DModel": "transformer"}  # where a pipeline keeps the class
MODEL_FOLDERS = tuple(dict.fromkeys(MODEL_FOLDER.values()))


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "model_index.json").is_file() or (
        any((path / m).is_dir() for m in MODEL_FOLDERS) and (path / "scheduler").is_dir())


def read_json(path: Path, file: Path) -> dict:
    """A config file of the folder `path` as a dict, or one line saying what is wrong with it."""
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: {file.relative_to(path)} cannot be read as JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: {file.relative_to(path)} must hold a JSON object, not a {type(value).__name__}")
    return value


def components(path: Path) -> set[str]:
    """The folder's component names: model_index.json's entries, or its sub-folders."""
    index = path / "model_index.json"
    return set(read_json(path, index)) if index.is_file() else {p.name for p in path.iterdir() if p.is_dir()}


def load_codec(path: Path, names: set[str]):
    """A latent model's autoencoder (vae/ or vqvae/) as a LatentCodec; None for a pixel-space model."""
    import diffusers

    from .latent import AUTOENCODERS, FOLDERS, LatentCodec

    found = [n for n in FOLDERS if n in names]
    if not found:
        return None
    folder, cls = _component(path, found[0])
    if cls not in AUTOENCODERS:
        raise UserError(f"{path}: its autoencoder {found[0]}/ ({cls}) is not one distmatch reads; a latent model's "
                        f"must be an {' or a '.join(AUTOENCODERS)}")
    return LatentCodec(getattr(diffusers, cls).from_pretrained(folder, **weights(folder)))


def weights(folder: Path) -> dict:
    """from_pretrained's arguments for a component's weights: a folder that holds only a variant of them
    (`diffusion_pytorch_model.fp16.safetensors`, as save_pretrained(variant="fp16") or a download of that variant
    writes) is read through it, in float32 as every teacher is."""
    import re

    import torch

    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if any(re.fullmatch(r"diffusion_pytorch_model(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?", n) for n in names):
        return {"local_files_only": True}
    variants = sorted({m.group(1) for n in names
                       if (m := re.fullmatch(r"diffusion_pytorch_model\.(\w+)\.(safetensors|bin)", n))})
    if not variants:
        return {"local_files_only": True}  # from_pretrained names what is missing
    variant = "fp16" if "fp16" in variants else variants[0]
    return {"local_files_only": True, "variant": variant, "torch_dtype": torch.float32}


def model_folder(names: set[str]) -> str:
    """unet, or transformer for a folder (or pipeline) that has one and no unet."""
    return "transformer" if "transformer" in names and "unet" not in names else "unet"


def _component(path: Path, name: str) -> tuple[Path, str]:
    """A component's folder and class name, from model_index.json when there is one."""
    folder = path / name
    index = path / "model_index.json"
    if index.is_file():
        entry = read_json(path, index).get(name)
        if not entry:
            raise UserError(f"{path}: model_index.json has no '{name}' component")
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
            raise UserError(f"{path}: model_index.json's '{name}' entry must be [library, class name], got {entry}")
        if not folder.is_dir():
            raise UserError(f"{path}: model_index.json names a {name} ({entry[1]}) but there is no {name}/ folder")
        return folder, entry[1]
    cfg = folder / ("scheduler_config.json" if name == "scheduler" else "config.json")
    if not cfg.is_file():
        raise UserError(f"{path}: no {cfg.relative_to(path)}")
    if not isinstance(cls := read_json(path, cfg).get("_class_name"), str) or not cls:
        raise UserError(f"{path}: {cfg.relative_to(path)} names no class (_class_name)")
    return folder, cls


# Older folders (the Hub's DiT-XL-2 among them) name a DiT by its former class, which diffusers itself reads by the
# config's norm_type; the same class with ada_norm_single is PixArt's.
LEGACY_CLASSES = {"Transformer2DModel": {"ada_norm_zero": "DiTTransformer2DModel",
                                         "ada_norm_single": "PixArtTransformer2DModel"}}


def model_class(path: Path, folder: Path, cls: str) -> str:
    """The model's class as diffusers loads it: a former class name resolved by its config, as diffusers does."""
    if cls not in LEGACY_CLASSES or not (folder / "config.json").is_file():
        return cls
    norm = read_json(path, folder / "config.json").get("norm_type")
    return LEGACY_CLASSES[cls].get(norm, cls)


def prediction_type(path: Path, sched_dir: Path, cfg) -> str:
    """The scheduler's prediction type; a folder saved before diffusers had one says `predict_epsilon` instead,
    which diffusers now ignores (false: the model predicts x_0)."""
    file = sched_dir / "scheduler_config.json"
    raw = read_json(path, file) if file.is_file() else {}
    if "prediction_type" not in raw and isinstance(raw.get("predict_epsilon"), bool):
        return "epsilon" if raw["predict_epsilon"] else "sample"
    return cfg.get("prediction_type", "epsilon")


def refuse_component(path: Path) -> None:
    """A component of a diffusers model (its unet/, scheduler/, ...) given for the whole model: one line saying
    which folder to give (distmatch's own config.json names no _class_name)."""
    for name in ("config.json", "scheduler_config.json"):
        try:
            cls = json.loads((path / name).read_text()).get("_class_name")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(cls, str) and cls:
            whole = (f"give the folder that holds it, {path.parent}" if is_diffusers_folder(path.parent) else
                     "give a whole model: a pipeline folder (model_index.json), or one holding unet/ (or transformer/) "
                     "and scheduler/")
            raise UserError(f"{path} is one component of a diffusers model (its {cls}); {whole}")


def class_aliases(path: Path) -> dict[str, int]:
    """Class names a pipeline keeps in model_index.json's id2label (DiTPipeline's: "tench, Tinca tinca"), each
    comma-separated name a class index, as DiTPipeline.get_label_ids reads them."""
    index = path / "model_index.json"
    id2label = read_json(path, index).get("id2label") if index.is_file() else None
    if not isinstance(id2label, dict):
        return {}
    return {name.strip(): int(i) for i, names in id2label.items() if str(i).isdigit() and isinstance(names, str)
            for name in names.split(",") if name.strip()}


def gan_features(net) -> str:
    """The sub-module whose output a GAN head reads: a UNet's mid_block (its deepest down block when it was built
    without one, mid_block_type=None), a DiT's middle transformer block."""
    if hasattr(net, "down_blocks"):
        return "mid_block" if net.mid_block is not None else f"down_blocks.{len(net.down_blocks) - 1}"
    return f"transformer_blocks.{len(net.transformer_blocks) // 2}"


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")  # σ-space, EDM's preconditioning


def flow_shift(cfg, sched_class: str, path: Path) -> float | None:
    """The shift of a flow-matching scheduler: a FlowMatch* one, or a DDPM-family solver run on flow sigmas
    (use_flow_sigmas with prediction_type flow_prediction, as UniPC and DPM-Solver are for flow models); None for
    a variance-preserving one."""
    prediction = cfg.get("prediction_type")
    if sched_class not in FLOW_SCHEDULERS and not cfg.get("use_flow_sigmas"):
        if prediction == "flow_prediction":
            raise UserError(f"{path}: its scheduler {sched_class} has prediction_type 'flow_prediction' without "
                            "use_flow_sigmas; save it with use_flow_sigmas=True and the model's flow_shift")
        return None
    if cfg.get("use_dynamic_shifting"):
        raise UserError(f"{path}: a flow scheduler with resolution-dependent shifting (use_dynamic_shifting) is "
                        "not supported; save it with a fixed shift")
    if sched_class in FLOW_SCHEDULERS:
        return float(cfg.shift)
    if prediction != "flow_prediction":
        raise UserError(f"{path}: its scheduler {sched_class} runs flow sigmas (use_flow_sigmas) but its "
                        f"prediction_type is {prediction!r}; a flow model predicts the velocity (flow_prediction)")
    return float(cfg.get("flow_shift", 1.0))


def adapter_for(unet, scheduler, sched_class: str, classes: int, path: Path, prediction: str):
    """The σ-space adapter a scheduler implies: DDPM-family (alphas_cumprod), flow matching or score SDE (VE)."""
    from .adapters import FlowAdapter, ScoreAdapter, VPAdapter

    cfg, features = scheduler.config, gan_features(unet)
    if (shift := flow_shift(cfg, sched_class, path)) is not None:
        # diffusers feeds a flow network t = s · num_train_timesteps
        return FlowAdapter(unet, cfg.num_train_timesteps, shift, time_scale=cfg.num_train_timesteps,
                           num_classes=classes, features=features)
    if sched_class in EDM_SCHEDULERS:
        from .preconditioned import PreconditionedAdapter

        return PreconditionedAdapter(unet, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, prediction, classes, features)
    if sched_class == "ScoreSdeVeScheduler":  # its pipeline keeps images in [0, 1]
        return ScoreAdapter(unet, cfg.sigma_min, cfg.sigma_max, (0.0, 1.0), num_classes=classes, features=features)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise UserError(f"{path}: its scheduler {sched_class} has no alphas_cumprod; distmatch reads DDPM-family "
                        "(variance-preserving) schedulers, flow-matching ones, EDM's and ScoreSdeVeScheduler")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise UserError(f"{path}: prediction_type {prediction!r} is not supported (epsilon, v_prediction, sample)")
    return VPAdapter(unet, scheduler.alphas_cumprod, prediction, num_classes=classes, features=features)


def x0_limit(cfg) -> dict | None:
    """How the scheduler limits x̂_0 while it samples (thresholding wins over clip_sample, as in diffusers);
    distmatch's Heun/Euler over the teacher limits it the same way. Flow schedulers have neither."""
    if cfg.get("thresholding"):
        return {"range": float(cfg.get("sample_max_value", 1.0)),
                "ratio": float(cfg.get("dynamic_thresholding_ratio", 0.995))}
    if cfg.get("clip_sample"):
        return {"range": float(cfg.get("clip_sample_range", 1.0))}
    return None


def load_diffusers_teacher(path: str | Path, solver: str = "heun", sample_steps: int = 18):
    """The LoadedModel of a diffusers folder (distmatch's σ-space teacher around its UNet and scheduler); a folder
    that `distmatch export` wrote is its student, sampled at its trained levels."""
    import diffusers

    from ..models import LoadedModel

    path = Path(path)
    names = components(path)
    record = exported_record(path, names)
    unet_dir, unet_class = _component(path, model_folder(names))
    unet_class = model_class(path, unet_dir, unet_class)
    sched_dir, sched_class = _component(path, "scheduler")
    if unet_class not in SUPPORTED_MODELS:
        raise UserError(f"{path}: its model is a {unet_class}; distmatch reads {', '.join(SUPPORTED_MODELS)} teachers")
    verbosity = diffusers.utils.logging.get_verbosity()
    # quiet its own notes on missing weights: the one line below says what is wrong
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
    try:
        unet = getattr(diffusers, unet_class).from_pretrained(unet_dir, **weights(unet_dir))
        scheduler = getattr(diffusers, sched_class).from_pretrained(sched_dir, local_files_only=True)
        codec = load_codec(path, names)
    except (OSError, ValueError, AttributeError, NotImplementedError) as e:
        raise UserError(f"{path}: cannot read the diffusers model ({str(e).splitlines()[0]})") from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, (list, tuple)) else (c.sample_size, c.sample_size)
    shape = (c.in_channels, *size)  # the network's samples: a latent model's latents
    classes = int(c.get(CLASS_COUNT[unet_class]) or 0)
    adapter = adapter_for(unet.eval().requires_grad_(False), scheduler, sched_class, classes, path,
                          prediction_type(path, sched_dir, scheduler.config))
    adapter.probe(shape)
    images = codec.image_shape(shape) if codec is not None else shape
    spec = DataSpec(kind="image", shape=images, source="", layout="nchw", dtype="float32", value_range=[-1.0, 1.0],
                    class_names=list(range(classes)))
    config = {"kind": "teacher", "teacher": "diffusers", "folder": str(path.resolve()), "network": adapter.config(),
              "num_classes": classes, "class_weights": [1.0 / classes] * classes if classes else [],
              "sigma_data": getattr(adapter, "sigma_data", 0.5), "solver": solver, "sample_steps": sample_steps,
              "spec": spec.to_dict(), "schedule": adapter.schedule().config()}
    if classes and (aliases := class_aliases(path)):
        config["class_aliases"] = aliases
    if limit := x0_limit(scheduler.config):
        config["x0_limit"] = limit
    if codec is not None:
        config.update(latent_shape=list(shape), codec=codec.config())
    if record is not None:
        spec = exported_spec(record, spec, path)
        config.update(kind="student", method=record.get("method"), recipe=record.get("recipe"), spec=spec.to_dict(),
                      sigmas=record["sigmas"], steps=len(record["sigmas"]), move=record.get("move", "renoise"))
        return LoadedModel("student", config, spec, adapter, class_weights=config["class_weights"], path=path,
                           codec=codec)
    return LoadedModel("teacher", config, spec, adapter, init_net=adapter, class_weights=config["class_weights"],
                       path=path, codec=codec)


def exported_spec(record: dict, spec: DataSpec, path: Path) -> DataSpec:
    """The data's layout, dtype and value range an exported student samples in, as its run folder did (exports
    older than the record's "spec" give [-1, 1] NCHW floats, as the network makes them)."""
    if not isinstance(record.get("spec"), dict):
        return spec
    data = DataSpec.from_dict(record["spec"])
    if tuple(data.shape) != tuple(spec.shape):
        raise UserError(f"{path}: its distillation record describes data of shape {tuple(data.shape)}, but its "
                        f"model makes {tuple(spec.shape)}")
    # the classes are the model's: labelled data distilled into an unconditional teacher carry names it has not
    return dataclasses.replace(data, class_names=spec.class_names)


def exported_record(path: Path, names: set[str]) -> dict | None:
    """The distillation record of a folder `distmatch export` wrote (None for any other folder)."""
    index = path / "model_index.json"
    record = read_json(path, index).get("_distmatch") if index.is_file() else None
    if not isinstance(record, dict) or not isinstance(record.get("sigmas"), list) or not record["sigmas"]:
        return None
    if "student" in names:
        raise UserError(f"{path} is a distmatch student exported with its own network code: load it with "
                        "DiffusionPipeline.from_pretrained(folder, trust_remote_code=True), or give distmatch the run "
                        "folder it was exported from")
    if record.get("method") == "msd":
        raise UserError(f"{path} is an msd student exported as one network per group of classes, which distmatch "
                        "does not read back: load it with DiffusionPipeline.from_pretrained(folder, "
                        "trust_remote_code=True), or give distmatch the run folder it was exported from")
    return record
