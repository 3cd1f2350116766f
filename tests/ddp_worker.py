"""Run by test_training under `accelerate launch --multi_gpu --num_processes 2`: distil, then save each rank's weights."""
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from distmatch.methods import run_distill
from distmatch.models import load_model

if __name__ == "__main__":
    teacher_dir, out_dir, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    run_distill(teacher_dir, out_dir, steps=2, overrides=overrides)
    model = load_model(out_dir)
    torch.save(model.denoiser.state_dict(), Path(out_dir) / f"rank{PartialState().process_index}.pt")
