"""student.lora_rank: the generator trained as a LoRA (peft) over the teacher's frozen network, saved merged."""
import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from distmatch import checkpoint as ckpt  # noqa: E402
from distmatch.errors import UserError  # noqa: E402
from distmatch.to_diffusers import export_student  # noqa: E402
from distmatch.methods import run_distill  # noqa: E402
from distmatch.methods.common import with_lora  # noqa: E402
from distmatch.models import load_model  # noqa: E402
from distmatch.training.trainer import read_checkpoint_iteration  # noqa: E402
from test_export import QUIET, ddpm_folder, same_images  # noqa: E402,F401


def test_a_lora_student_trains_its_adapters_only_and_is_saved_merged(ddpm_folder, tmp_path):  # noqa: F811
    """Its generator's own weights stay the teacher's and only the LoRA moves; the saved student is the EMA's
    LoRA network merged (same outputs), exports to stock diffusers as any student does, and resumes."""
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, size=(64, 8, 8), dtype=np.uint8))
    args = dict(steps=2, data_source=str(tmp_path / "images.npy"))
    lora = QUIET + ["student.lora_rank=4", "train.lr=1e-3"]
    out = run_distill(ddpm_folder, tmp_path / "s", overrides=lora, **args)
    teacher = load_model(ddpm_folder).denoiser
    base = teacher.state_dict()
    state, _ = ckpt.load_tensors(out / ckpt.CHECKPOINT)
    gen = {k[len("module/gen/"):]: v for k, v in state.items() if k.startswith("module/gen/")}
    assert sum(".lora_" in k for k in gen) > 0
    for key, value in gen.items():
        if ".lora_" not in key:
            torch.testing.assert_close(value, base[key.replace(".base_layer.", ".")], rtol=0, atol=0, msg=key)
    assert max(float(v.abs().max()) for k, v in gen.items() if ".lora_B." in k) > 0  # B starts at 0

    ema = copy.deepcopy(teacher)
    with_lora(ema, 4)
    ema.load_state_dict({k[len("module/ema/"):]: v for k, v in state.items() if k.startswith("module/ema/")})
    saved = copy.deepcopy(teacher)
    weights, _ = ckpt.load_tensors(out / ckpt.MODEL)
    saved.load_state_dict({k[len("gen."):]: v for k, v in weights.items()})
    assert not any(".lora_" in k for k in weights)
    x, sigma = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, 3.0, 14.0])
    with torch.no_grad():
        moved = (saved(x, sigma) - teacher(x, sigma)).abs().max()
        torch.testing.assert_close(saved(x, sigma), ema(x, sigma), rtol=1e-4, atol=1e-4)
    assert moved > 1e-3  # the LoRA moved the student off its teacher, ten times the tolerance

    export_student(out, tmp_path / "e")
    _, diff = same_images(out, tmp_path / "e", 2, 0, tmp_path)
    assert diff < 1e-4
    run_distill(ddpm_folder, tmp_path / "s", overrides=lora + ["train.iters=4"], **args)
    assert read_checkpoint_iteration(tmp_path / "s") == 4
    with pytest.raises(UserError, match="student.lora_rank must be >= 0"):
        run_distill(ddpm_folder, tmp_path / "bad", overrides=QUIET + ["student.lora_rank=-1"], **args)


def test_a_student_without_lora_is_saved_without_importing_peft():
    """peft (and the transformers it imports) cost a run seconds at its first checkpoint: only a LoRA needs them."""
    import subprocess
    import sys

    code = ("import sys, torch; from distmatch.methods.common import merged_state_dict\n"
            "state = merged_state_dict(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Conv2d(3, 1, 1)))\n"
            "assert list(state) == ['0.weight', '0.bias', '1.weight', '1.bias'], list(state)\n"
            "assert 'peft' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
