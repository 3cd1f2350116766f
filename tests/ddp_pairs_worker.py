"""Run by test_training under `accelerate launch --multi_gpu --num_processes 2`: dmd, each process writing how
many of the teacher's ODE pairs it solved itself."""
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from distmatch.cli import run
from distmatch.methods import pairs

if __name__ == "__main__":
    teacher_dir, out_dir, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    solved, solve = [], pairs.ode_trajectory
    pairs.ode_trajectory = lambda denoiser, z, *args: solved.append(len(z)) or solve(denoiser, z, *args)
    run(["distill", "--teacher", teacher_dir, "--out", out_dir, "--method", "dmd", "--steps", "2", "--set", *overrides])
    Path(out_dir, f"solved{PartialState().process_index}.txt").write_text(str(sum(solved)))
