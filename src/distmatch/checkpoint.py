"""Run folders on disk: training checkpoints and exported models, as safetensors + JSON, always written atomically.

A file is written to a temporary name in the same folder, flushed to disk, then renamed over the old one, so an
interrupted write never leaves a half file: either the old checkpoint or the new one is there.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import UserError

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
CONFIG = "config.json"
DATA = "data.npz"  # in-memory data given in Python, saved in the run so that a resumed run re-reads them
PAIRS = "dmd_pairs.safetensors"  # the teacher's ODE pairs, cached for the run's methods that regress on them
PAIRS_PARTS = "dmd_pairs.parts"  # each chunk of them made so far, a file of its own: a stopped run keeps what it made


# a temporary's name, ".<name>.<pid>.<8 hex>.tmp": written by atomic_write_bytes, cleared by remove_stale_temporaries
TEMPORARY = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return  # already there (a finished run re-run, even in a read-only folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    # An exclusive create under a random name, not tempfile: the file gets the umask's usual permissions (a
    # tempfile's are 0600), and a name clash raises before there is a file of ours to clean up.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        f = open(tmp, "xb")
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """The same error, naming the file the user knows rather than our temporary one."""
    return type(e)(e.errno, e.strerror, str(path))


def remove_stale_temporaries(folder: Path) -> None:
    """The temporaries atomic_write_bytes left in `folder` (and its previews/) when a process was killed mid-write:
    for the process that holds the folder's lock, no other writer's can be live."""
    for tmp in [*Path(folder).glob(".*.tmp"), *Path(folder).glob("previews/.*.tmp")]:
        if TEMPORARY.fullmatch(tmp.name):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # a read-only folder: a finished run is still read there
                pass


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Tensors plus a JSON-able `meta` dict (stored in the safetensors header) in one atomic file."""
    flat, seen = {}, set()
    for k, v in tensors.items():  # tied weights (one tensor under two names) are stored twice: safetensors shares none
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        flat[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    header = {"meta": json.dumps(meta or {})}
    atomic_write_bytes(path, save(flat, metadata=header))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


# --- optimizer state <-> flat tensors -------------------------------------------------------------------------

def optimizer_to_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[k] = value
    for key, value in meta.get("scalars", {}).items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def module_to_tensors(name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"module/{name}/{k}": v for k, v in module.state_dict().items()}


def module_from_tensors(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = f"module/{name}/"
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- exported models -------------------------------------------------------------------------------------------

def save_model(run_dir: str | os.PathLike, weights: dict[str, torch.Tensor], config: dict) -> None:
    """The sampling-ready model of a run: weights first, then the config that marks the folder complete."""
    save_tensors(Path(run_dir) / MODEL, weights, {"kind": config.get("kind")})
    atomic_write_json(Path(run_dir) / CONFIG, config)


def read_model_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).exists():
        raise UserError(f"no such model folder: {run_dir}")
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir} is a file, not a model folder (a run folder, or a diffusers model folder)")
    if not path.is_file():
        raise UserError(f"{run_dir} holds no finished model ({CONFIG} missing); "
                        "if its training was interrupted, re-run the same command to finish it")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}")
    if not isinstance(cfg, dict) or cfg.get("kind") not in ("teacher", "student") or not isinstance(
            cfg.get("spec"), dict):
        raise UserError(f"{path} does not describe a distmatch teacher or student")
    return cfg
