"""Inception FID / KID / precision / recall of student run folders on MNIST, N samples each (seed 0), with the
pixel shares of bench/speckle.py (black, faint grey, ink), one JSON line per run.

    python bench/score_students.py RUN [RUN ...] --out bench/out/students --inception default_1.pt [--n 1000]

A run is sampled once (<out>/samples/<run name>.pt) and scored once (<out>/samples/<run name>.json); re-running
reads both back. Images are clamped to [-1, 1], as a diffusers pipeline returns them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--inception", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from distmatch.eval.inception import inception_path
    from distmatch.models import load_model
    from mnist import score_rows
    from speckle import pixel_shares

    out = Path(args.out)
    plan = []
    for run in map(Path, args.runs):
        model = load_model(run)
        plan.append((run.name, (model.nfe(), lambda n, g, m=model: m.sample(n, seed=0)[0].float())))
    rows = score_rows(plan, out, args.n, inception_path(args.inception), prepare=lambda x: x.clamp(-1, 1))
    for row in rows:
        x = torch.load(out / "samples" / f"{row['name']}.pt")[0]
        print(json.dumps({k: row[k] for k in ("name", "nfe", "fd", "kid", "precision", "recall")}
                         | pixel_shares(x)), flush=True)


if __name__ == "__main__":
    main()
