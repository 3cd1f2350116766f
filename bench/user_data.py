"""Defaults on data that is not a preset: a user's own .npy files, through the command exactly as documented.

Two data sets are made here (seeded, in raw user units, not pre-normalised):
  gmm8d     12 anisotropic Gaussians in 8-D, unequal weights, means spread over [-40, 40]^8 (axis stds 0.5-4)
  pinwheel  2-D pinwheel (5 curved arms), scaled to [0, 100]-ish coordinates
Each gets a 30000-point training file and a 5000-point held-out file. Then, with every setting at its default:
    distmatch teacher --data train.npy --out T
    distmatch distill --teacher T --out S1            (1-step student)
    distmatch distill --teacher T --out S4 --steps 4  (4-step student)
and the sliced Wasserstein distance against the held-out file (5000 samples, mean of 3 seeds, in the model's
normalised space) for: the teacher at its default steps, the teacher with Euler at 1 and 4 steps, the students.

    python bench/user_data.py --out bench/out/user [--only gmm8d] [--threads 1]
Results: <out>/results.json and <out>/results.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def gmm8d(n: int, rng: np.random.Generator) -> np.ndarray:
    k, d = 12, 8
    means = np.random.default_rng(7).uniform(-40, 40, size=(k, d))
    stds = np.random.default_rng(8).uniform(0.5, 4.0, size=(k, d))
    rots = [np.linalg.qr(np.random.default_rng(100 + i).normal(size=(d, d)))[0] for i in range(k)]
    weights = np.random.default_rng(9).uniform(0.5, 2.0, size=k)
    comp = rng.choice(k, size=n, p=weights / weights.sum())
    z = rng.normal(size=(n, d)) * stds[comp]
    return (np.einsum("nij,nj->ni", np.stack(rots)[comp], z) + means[comp]).astype(np.float32)


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    arms, radial, tangential, rate = 5, 0.3, 0.05, 0.25
    labels = rng.integers(arms, size=n)
    feats = rng.normal(size=(n, 2)) * np.array([radial, tangential])
    feats[:, 0] += 1.0
    angles = 2 * math.pi * labels / arms + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1).reshape(-1, 2, 2)
    x = np.einsum("ni,nij->nj", feats, rot)
    return (x * 25 + 50).astype(np.float32)


MAKERS = {"gmm8d": gmm8d, "pinwheel": pinwheel}


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distmatch.cli", *args, "--set", "train.progress=false"], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    return round(time.perf_counter() - t0, 1)


def bench_one(name: str, root: Path) -> dict:
    from distmatch.data import load_data
    from distmatch.eval.vectors import sliced_wasserstein
    from distmatch.models import load_model

    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    train_file, test_file = d / "train.npy", d / "test.npy"
    if not test_file.exists():
        np.save(train_file, MAKERS[name](30000, np.random.default_rng(0)))
        np.save(test_file, MAKERS[name](5000, np.random.default_rng(1)))
    result = {"data": name, "dim": int(np.load(test_file).shape[1])}
    result["teacher_s"] = cli("teacher", "--data", str(train_file), "--out", str(d / "teacher"))
    result["distill_1step_s"] = cli("distill", "--teacher", str(d / "teacher"), "--out", str(d / "student-1"))
    result["distill_4step_s"] = cli("distill", "--teacher", str(d / "teacher"), "--out", str(d / "student-4"),
                                    "--steps", "4")
    teacher = load_model(d / "teacher")
    ref = load_data(str(test_file), spec=teacher.spec)
    euler = teacher.with_solver("euler")
    plan = [("teacher", teacher, None), ("teacher euler", euler, 1), ("teacher euler", euler, 4),
            ("student K=1", load_model(d / "student-1"), 1), ("student K=4", load_model(d / "student-4"), 4)]
    rows = []
    for label, model, steps in plan:
        vals = [sliced_wasserstein(model.sample(5000, steps, seed=s)[0], ref.x) for s in range(3)]
        rows.append({"model": label, "nfe": model.nfe(steps), "swd": sum(vals) / 3, "swd_seeds": vals})
        print(name, rows[-1], flush=True)
    result["rows"] = rows
    return result


def markdown(results: list[dict]) -> str:
    out = []
    for r in results:
        base = r["rows"][0]["swd"]
        out += [f"\n### {r['data']} ({r['dim']}-D, your own .npy)\n",
                f"teacher training {r['teacher_s']} s; distillation 1-step {r['distill_1step_s']} s, "
                f"4-step {r['distill_4step_s']} s (wall-clock of the whole command)\n",
                "| model | NFE | SWD | x teacher |", "|---|---|---|---|"]
        out += [f"| {row['model']} | {row['nfe']} | {row['swd']:.4f} | {row['swd'] / base:.2f} |" for row in r["rows"]]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/user")
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    root = Path(args.out)
    results = []
    for name in (args.only.split(",") if args.only else list(MAKERS)):
        results.append(bench_one(name, root))
        (root / "results.json").write_text(json.dumps(results, indent=1))
        (root / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
