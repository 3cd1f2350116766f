"""Issue-2 benchmark: for each 2-D preset and digits, teacher vs few-step teacher vs DMD2 students, side by side.

For each data set: the teacher (trained, or exact for mixtures) at its recommended steps and with Euler at 1/2/4 steps (equal NFE), a
1-step DMD2 student and a 4-step DMD2 student (sampled with 2 and 4 of its steps; every step of a backward-simulated
student is trained to give data samples). Quality against the held-out split: vectors by the sliced Wasserstein
distance (5000 vs 5000 points, mean of 3 sample seeds), digits by the Fréchet distance on the in-domain classifier's
features (1000 samples vs the 360 held-out images, mean of 3 seeds). Speed: samples/s at batch 1024 (vectors) /
256 (images), and the wall-clock of teacher training and of each distillation.

    python bench/presets.py --out bench/out/presets [--only moons,digits] [--iters 10000] [--threads 2]
Results: <out>/results.json and a markdown table <out>/results.md (copied into bench/RESULTS.md by hand).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

VECTOR_PRESETS = ["8gaussians", "25gaussians", "moons", "checkerboard", "swissroll"]
QUIET = ["train.progress=false"]


def quality(model, reference, steps, kind, train) -> dict:
    from distmatch.eval.evaluate import evaluate_model

    runs = [evaluate_model(model, reference, n=5000 if kind == "vector" else 1000, steps=steps, seed=s,
                           speed=(s == 0), train=train) for s in range(3)]
    key = "swd" if kind == "vector" else "fd"
    out = {"steps": runs[0]["steps"], "nfe": runs[0]["nfe"], key: sum(r[key] for r in runs) / 3,
           f"{key}_seeds": [r[key] for r in runs], "samples_per_s": runs[0]["samples_per_s"]}
    for extra in ("modes_covered", "off_mode", "classes_covered", "class_accuracy", "recall"):
        if extra in runs[0]:
            out[extra] = sum(r[extra] for r in runs) / 3
    return out


def bench_one(name: str, root: Path, iters: int | None) -> dict:
    from distmatch.data import load_data
    from distmatch.methods import run_distill
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    t0 = time.perf_counter()
    tdir = train_teacher(name, root / name / "teacher", overrides=QUIET)
    result = {"data": name, "teacher_train_s": round(time.perf_counter() - t0, 1), "rows": []}
    extra = QUIET + ([f"train.iters={iters}"] if iters else [])
    for k in (1, 4):
        t0 = time.perf_counter()
        run_distill(tdir, root / name / f"student-{k}", steps=k, overrides=extra)
        result[f"distill_{k}step_s"] = round(time.perf_counter() - t0, 1)
    teacher = load_model(tdir)
    kind = teacher.spec.kind
    reference = load_data(name, split="test", spec=teacher.spec)
    train = load_data(name, spec=teacher.spec) if kind == "image" else None
    euler = teacher.with_solver("euler")  # equal NFE; Heun's 2-step correction at σ_min diverges
    plan = [("teacher", teacher, None)]
    if teacher.fitted_network() is not None:  # exact mixture: its fitted network is the fair speed baseline
        plan += [("teacher network", teacher.fitted_network(), None)]
    plan += [("teacher euler", euler, k) for k in (1, 2, 4)]
    plan += [("student K=1", load_model(root / name / "student-1"), 1)]
    plan += [("student K=4", load_model(root / name / "student-4"), k) for k in (2, 4)]
    for label, model, steps in plan:
        row = quality(model, reference, steps, kind, train)
        row["model"] = label
        result["rows"].append(row)
        print(name, label, {k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
    return result


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        key = "swd" if "swd" in r["rows"][0] else "fd"
        base = r["rows"][0][key]
        lines += [f"\n### {r['data']}\n", f"teacher training {r['teacher_train_s']} s; distillation 1-step "
                  f"{r['distill_1step_s']} s, 4-step {r['distill_4step_s']} s\n",
                  f"| model | steps | NFE | {key} | x teacher | samples/s |", "|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['model']} | {row['steps']} | {row['nfe']} | {row[key]:.4f} | {row[key] / base:.2f} | "
                         f"{row['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/presets")
    ap.add_argument("--only", default="")
    ap.add_argument("--iters", type=int, default=None, help="distillation iterations (default: the method's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else VECTOR_PRESETS + ["digits"]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        results.append(bench_one(name, root, args.iters))
        (root / "results.json").write_text(json.dumps(results, indent=1))
        (root / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
