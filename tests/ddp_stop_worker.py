"""Run by test_training under `accelerate launch --multi_gpu --num_processes 2`: `stop` sends SIGINT to the first
process only, at its third step; `differ` distils a network each process builds from its own random start;
`early` makes accelerate's state first, as a user's script may (on CPUs it then sees one process)."""
import os
import signal
import sys

import numpy as np
import torch

import distmatch
from distmatch.cli import main
from distmatch.methods.dmd2 import Method

if __name__ == "__main__":
    mode, teacher_dir, out_dir, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])  # not PartialState(): made before the run's Accelerator(cpu=True), it sees 1
    if mode == "stop":
        step = Method.step

        def step_and_signal(self, batch, it):
            if rank == 0 and it == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return step(self, batch, it)

        Method.step = step_and_signal
        main(["distill", "--teacher", teacher_dir, "--out", out_dir, "--set", *overrides])
    class Net(torch.nn.Module):  # a σ-space denoiser, x̂_0 = f(x / √(1 + σ²))
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

        def forward(self, x, sigma):
            return self.f(x / (1 + sigma[:, None] ** 2).sqrt())

    if mode == "early":
        from accelerate import PartialState

        PartialState()
    torch.manual_seed(rank if mode == "differ" else 0)  # "differ": a teacher no two processes share
    teacher = distmatch.wrap_teacher(Net(), sample_shape=(2,))
    try:
        distmatch.distill(teacher, out_dir, data=np.zeros((64, 2), np.float32), progress=False,
                          settings={"train.iters": 2, "dmd2.gan": False})
    except distmatch.api.UserError as e:
        print(f"refused: {e}", flush=True)
