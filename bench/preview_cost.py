"""What the training previews cost: one preview's seconds against the training seconds between two previews
(train.ckpt_every iterations), for finished run folders.

    python bench/preview_cost.py RUN... [--threads 1] [--repeats 3]

Per run: seconds per iteration from its log.jsonl (its whole run, previews and checkpoints included), the
median time of `repeats` previews of its saved model (the same network, sample count and picture as during
training: training/preview.py), and their ratio over train.ckpt_every iterations.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def seconds_per_iteration(run: Path) -> tuple[float, int]:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return log[-1]["time"] / log[-1]["it"], log[-1]["it"]


def preview_seconds(run: Path, repeats: int) -> float:
    from distmatch.models import load_model
    from distmatch.training.preview import write_preview

    model = load_model(run)
    model = model.fitted_network() or model  # an exact teacher's previews show the network fitted to it
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            write_preview(Path(tmp), model, i)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| run | iterations | s / iteration | train.ckpt_every | s / preview | preview share |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        per_it, iters = seconds_per_iteration(run)
        every = json.loads((run / "run.json").read_text())["config"]["train"]["ckpt_every"]
        p = preview_seconds(run, args.repeats)
        print(f"| {run} | {iters} | {per_it:.4f} | {every} | {p:.3f} | {100 * p / (p + every * per_it):.2f} % |")


if __name__ == "__main__":
    main()
