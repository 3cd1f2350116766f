"""Each method as published against its recipe, on the 2-D presets, a user's 8-D mixture and digits.

Every run is `distmatch distill --teacher T --out S [--method M | --recipe R] [--steps K]` with every other setting
at its default, scored against the held-out split beside the teacher: SWD for vectors (5000 samples vs 5000, mean
of 3 sample seeds), FD on the in-domain classifier's features for digits (1000 samples, mean of 3 seeds).

    python bench/published.py run   --out bench/out/published --jobs 2 [--only 8gaussians:dmd2:1,...]
    python bench/published.py table --out bench/out/published          # -> <out>/table.md

A job is DATA:ENTRY:K (ENTRY a method or a recipe); `--only` takes such triples or prefixes of them. Each job
writes <out>/runs/<data>-<entry>-<K>.json; teachers are trained once under <out>/teachers (one process trains each,
others wait). Jobs run one per process with one thread each.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUIET = ["train.progress=false"]
VECTOR_DATA = ["8gaussians", "25gaussians", "moons", "checkerboard", "swissroll", "gmm8d"]
VECTOR_ENTRIES = [("dmd2", 1), ("dmd", 1), ("fdistill", 1), ("tdm", 4), ("dmd2", 4)]
IMAGE_ENTRIES = [("dmd2", 1), ("dmd", 1), ("fdistill", 1), ("tdm", 4), ("dmd2", 4)]


# The recipes are the vector defaults of earlier rounds, measured then with the same teachers' settings and the same
# scoring (SWD x teacher, 5000 samples x 3 seeds); (recipe, K, x teacher, where in bench/RESULTS.md).
RECIPE_FIGURES = {
    "dmd2": {"8gaussians": 1.10, "25gaussians": 1.06, "moons": 1.03, "checkerboard": 1.00, "swissroll": 1.08,
             "gmm8d": 1.20, "_": ("dmd2+ode", 1, "sixth round")},
    "dmd": {"8gaussians": 1.06, "25gaussians": 1.06, "moons": 0.99, "checkerboard": 1.00, "swissroll": 1.03,
            "_": ("dmd+warmup", 1, "seventh round")},
    "fdistill": {"8gaussians": 1.14, "25gaussians": 1.09, "moons": 0.99, "checkerboard": 1.00, "swissroll": 1.00,
                 "_": ("fdistill+ode", 1, "seventh round")},
    "tdm": {"8gaussians": 1.06, "25gaussians": 1.02, "moons": 1.08, "checkerboard": 0.81, "swissroll": 1.12,
            "gmm8d": 0.98, "_": ("tdm+ode", 4, "eighth round")},
}


def jobs_for(data: str) -> list[str]:
    entries = IMAGE_ENTRIES if data == "digits" else VECTOR_ENTRIES
    return [f"{data}:{e}:{k}" for e, k in entries]


def data_source(data: str, root: Path) -> tuple[str, str]:
    """(training source, held-out source) for a data name; gmm8d is written as a user's .npy files."""
    if data != "gmm8d":
        return data, data
    from user_data import gmm8d

    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    train, test = d / "gmm8d-train.npy", d / "gmm8d-test.npy"
    if not test.exists():
        np.save(train, gmm8d(30000, np.random.default_rng(0)))
        np.save(test, gmm8d(5000, np.random.default_rng(1)))
    return str(train), str(test)


def teacher_for(data: str, root: Path) -> Path:
    from distmatch.teachers.train import train_teacher

    out = root / "teachers" / data
    lock = out.with_suffix(".lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:  # one process trains each teacher, the others wait for it
        if (out / "config.json").exists():
            return out
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            time.sleep(5)
    t0 = time.perf_counter()
    train_teacher(data_source(data, root)[0], out, overrides=QUIET)
    (out / "bench_train_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return out


def score(model, data: str, root: Path, steps: int | None) -> dict:
    """SWD (vectors) or FD (images), mean of 3 sample seeds, against the held-out data."""
    from distmatch.data import is_preset, load_data
    from distmatch.eval.evaluate import evaluate_model

    held_out = data_source(data, root)[1]
    ref = load_data(held_out, split="test" if is_preset(held_out) else "train", spec=model.spec)
    kind = model.spec.kind
    train = load_data(data, spec=model.spec) if kind == "image" else None
    runs = [evaluate_model(model, ref, n=5000 if kind == "vector" else 1000, steps=steps, seed=s, speed=(s == 0),
                           train=train) for s in range(3)]
    key = "swd" if kind == "vector" else "fd"
    out = {key: sum(r[key] for r in runs) / 3, f"{key}_seeds": [r[key] for r in runs],
           "nfe": runs[0]["nfe"], "samples_per_s": runs[0]["samples_per_s"]}
    for extra in ("modes_covered", "off_mode", "classes_covered", "recall"):
        if extra in runs[0]:
            out[extra] = sum(r[extra] for r in runs) / 3
    return out


def one_job(job: str, root: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from distmatch.methods import run_distill
    from distmatch.methods.recipes import RECIPES
    from distmatch.models import load_model

    data, entry, k = job.split(":")
    root = Path(root)
    teacher = teacher_for(data, root)
    out = root / "runs" / f"{data}-{entry}-{k}"
    t0 = time.perf_counter()
    recipe = entry if entry in RECIPES else None
    run_distill(teacher, out, method=None if recipe else entry, recipe=recipe, steps=int(k), overrides=QUIET)
    result = {"job": job, "data": data, "entry": entry, "steps": int(k), "distill_s": round(time.perf_counter() - t0, 1)}
    result.update(score(load_model(out), data, root, int(k)))
    (root / "runs" / f"{data}-{entry}-{k}.json").write_text(json.dumps(result, indent=1))
    print(job, {a: b for a, b in result.items() if not isinstance(b, list)}, flush=True)
    return result


def teacher_rows(data: str, root: Path) -> dict:
    """The teacher at its recommended steps and with Euler at 1 and 4 steps (equal NFE)."""
    from distmatch.models import load_model

    path = root / "teachers" / f"{data}-scores.json"
    if path.exists():
        return json.loads(path.read_text())
    teacher = load_model(root / "teachers" / data)
    euler = teacher.with_solver("euler")
    rows = {"teacher": score(teacher, data, root, None), "euler1": score(euler, data, root, 1),
            "euler4": score(euler, data, root, 4)}
    path.write_text(json.dumps(rows, indent=1))
    return rows


def table(root: Path) -> str:
    """One row per preset and method: the published method (this round) beside its recipe (earlier rounds)."""
    runs = [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))]
    lines = ["| data | teacher (NFE 79; digits 35) | method, K | published | x teacher | modes / classes | recipe | "
             "recipe: x teacher |", "|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in runs):
        t = teacher_rows(data, root)["teacher"]
        for r in sorted((r for r in runs if r["data"] == data), key=lambda r: (r["steps"], r["entry"])):
            name, k, where = RECIPE_FIGURES.get(r["entry"], {}).get("_", ("–", "", ""))
            fig = RECIPE_FIGURES.get(r["entry"], {}).get(data)
            cover = r.get("modes_covered")
            lines.append(f"| {data} | SWD {t['swd']:.4f} | {r['entry']}, {r['steps']} | SWD {r['swd']:.4f} | "
                         f"{r['swd'] / t['swd']:.2f} | {'–' if cover is None else f'{cover:.2f}'} | {name} | "
                         f"{'–' if fig is None else f'{fig:.2f} ({where})'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--out", default="bench/out/published")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if args.what == "table":
        import torch

        torch.set_num_threads(2)
        (root / "table.md").write_text(table(root))
        print((root / "table.md").read_text())
        return
    every = [j for d in VECTOR_DATA + ["digits"] for j in jobs_for(d)]
    wanted = [j for p in args.only.split(",") for j in every if j.startswith(p)] if args.only else every
    wanted += [p for p in args.only.split(",") if p.count(":") == 2 and p not in every]  # recipes, other K
    todo = [j for j in dict.fromkeys(wanted) if not (root / "runs" / f"{j.replace(':', '-')}.json").exists()]
    print(f"{len(todo)} jobs: {', '.join(todo)}", flush=True)
    with mp.get_context("spawn").Pool(args.jobs) as pool:  # one job at a time per process, in the order given
        list(pool.imap(run_job, [(j, str(root)) for j in todo], chunksize=1))


def run_job(args: tuple[str, str]) -> dict:
    return one_job(*args)


if __name__ == "__main__":
    main()
