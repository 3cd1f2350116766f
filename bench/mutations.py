"""The values behind tests/test_mutations.py: each method's short run, clean and with each mutation, scored as the
tests score it (SWD, modes, and for msd the share on each class's own component and each class's width).

    python bench/mutations.py --out bench/out/mutations [--only tdm "dmd, DM half"]   # -> <out>/results.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main():
    import test_mutations as T
    from distmatch.teachers.train import train_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/mutations")
    ap.add_argument("--only", nargs="*", help="runs of tests/test_mutations.RUNS (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out)
    net = ["network.width=64", "network.depth=2", "network.fourier=32"]
    teachers = {d: train_teacher(d, root / d, overrides=net + T.QUIET + ["train.iters=600", "train.batch_size=512"])
                for d in ("8gaussians", "8gaussians-labeled")}
    out = {}
    for name in args.only or T.RUNS:
        for mutation in ("clean",) + T.MUTATIONS[name]:
            patch = pytest.MonkeyPatch()
            if mutation != "clean":
                getattr(T, mutation)(patch)
            run = root / f"{name}-{mutation}".replace(" ", "").replace(",", "")
            shutil.rmtree(run, ignore_errors=True)
            r = T.short_run(teachers, run, name)
            patch.undo()
            out[f"{name}:{mutation}"] = {**{k: v for k, v in vars(r).items() if k != "mode_histogram"},
                                         "passes": T.passes(r, name)}
            print(name, mutation, out[f"{name}:{mutation}"], flush=True)
            (root / "results.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
