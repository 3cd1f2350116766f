"""Run by test_training under `accelerate launch --multi_gpu --num_processes 2`: the distill command, then each rank's
weights saved."""
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from distmatch.cli import run
from distmatch.models import load_model

if __name__ == "__main__":
    teacher_dir, out_dir, method, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    run(["distill", "--teacher", teacher_dir, "--out", out_dir, "--method", method, "--steps", "2", "--set",
         *overrides])
    model = load_model(out_dir)
    torch.save(model.denoiser.state_dict(), Path(out_dir) / f"rank{PartialState().process_index}.pt")
