"""Issue-3 benchmark: every method against one teacher per data set, f-divergences on 25 Gaussians, MSD vs DMD2.

    python bench/methods.py compare  --out bench/out/methods [--only moons,digits]   # `distmatch compare` per data set
    python bench/methods.py fdiv     --out bench/out/methods [--iters 2000]         # mode coverage per f-divergence
    python bench/methods.py msd      --out bench/out/methods [--rows msd-8k,msd-dm-8k]  # 4 students vs 1 on digits
    python bench/methods.py msd2d    --out bench/out/methods [--only 8gaussians-labeled] [--rows msd,msd-dm]
                                                                                    # the same on labelled 2-D
`--rows` runs only the named rows (their run folders' names; the teacher always), and each part resumes.

Each writes <out>/<part>.json and <out>/<part>.md (copied into bench/RESULTS.md by hand).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QUIET = ["train.progress=false"]
DATASETS = ["8gaussians", "25gaussians", "moons", "checkerboard", "swissroll", "digits"]
DIVERGENCES = ["rkl", "softened-rkl", "hellinger", "js", "kl", "jeffreys", "neyman"]


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def run_compare_all(out: Path, only: list[str]) -> None:
    from distmatch.report.compare import run_compare

    results, md = {}, []
    for data in only or DATASETS:
        t0 = time.perf_counter()
        # one job at a time: this script is itself run beside other benchmark jobs
        run_compare(data, "dmd2,dmd,fdistill,tdm", None, str(out / f"compare-{data}"), None, QUIET, jobs=1)
        rows = json.loads((out / f"compare-{data}" / "compare.json").read_text())["rows"]
        results[data] = {"rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
        key = "swd" if "swd" in rows[0] else "fd"
        for r in rows:
            r["x_teacher"] = r[key] / rows[0][key]
        cols = ["name", "nfe", key, "x_teacher", "modes_covered" if key == "swd" else "classes_covered",
                "samples_per_s", "distill_s", "peak_mb"]
        md += [f"\n### {data} (whole comparison {results[data]['wall_s']} s)\n", table(rows, cols)]
        (out / "compare.json").write_text(json.dumps(results, indent=1))
        (out / "compare.md").write_text("\n".join(md) + "\n")


def run_fdiv(out: Path, iters: int) -> None:
    from distmatch.data import load_data
    from distmatch.methods import run_distill
    from distmatch.eval.vectors import mode_stats, sliced_wasserstein
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    tdir = train_teacher("25gaussians", out / "fdiv" / "teacher", overrides=QUIET)
    teacher = load_model(tdir)
    ref = load_data("25gaussians", split="test", spec=teacher.spec)
    rows = []
    runs = [("dmd2", "dmd2", [])] + [(f"fdistill {d}", "fdistill", [f"fdistill.divergence={d}"]) for d in DIVERGENCES]
    for name, method, extra in runs:
        run_dir = out / "fdiv" / name.replace(" ", "-")
        run_distill(tdir, run_dir, method=method, overrides=QUIET + [f"train.iters={iters}"] + extra)
        model = load_model(run_dir)
        stats = [mode_stats(model.sample(5000, seed=s)[0], ref.mixture) for s in range(3)]
        swd = [sliced_wasserstein(model.sample(5000, seed=s)[0], ref.x) for s in range(3)]
        rows.append({"name": name, "swd": sum(swd) / 3, "modes_covered": sum(s["modes_covered"] for s in stats) / 3,
                     "off_mode": sum(s["off_mode"] for s in stats) / 3,
                     "smallest_mode_share": sum(min(s["mode_histogram"]) for s in stats) / 3 * 25})
        print(rows[-1], flush=True)
        (out / "fdiv.json").write_text(json.dumps(rows, indent=1))
        (out / "fdiv.md").write_text(table(rows, ["name", "swd", "modes_covered", "off_mode",
                                                  "smallest_mode_share"]) + "\n")


def run_msd(out: Path, only_rows: list[str]) -> None:
    from distmatch.data import load_data
    from distmatch.methods import run_distill
    from distmatch.eval.evaluate import evaluate_model
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    tdir = train_teacher("digits", out / "msd" / "teacher", overrides=QUIET)
    teacher = load_model(tdir)
    ref = load_data("digits", split="test", spec=teacher.spec)
    train = load_data("digits", spec=teacher.spec)
    plan = [("dmd2", "dmd2", "dmd2", ["train.iters=2000"]),
            ("dmd2 without GAN", "dmd2-without-GAN", "dmd2", ["train.iters=2000", "dmd2.gan=false"]),
            ("msd 4 students, same total iterations", "msd-4-students", "msd", ["train.iters=2000"]),
            ("msd 4 students, 4x iterations (each as dmd2)", "msd-8k", "msd", ["train.iters=8000"]),
            ("msd 4 students, 4x iterations, DM stage only (msd.gan=false)", "msd-dm-8k", "msd",
             ["train.iters=8000", "msd.gan=false"])]
    rows = []
    for name, folder, method, extra in plan:
        if only_rows and folder not in only_rows:
            continue
        run_dir = out / "msd" / folder
        t0 = time.perf_counter()
        run_distill(tdir, run_dir, method=method, overrides=QUIET + extra)
        seconds = round(time.perf_counter() - t0, 1)
        model = load_model(run_dir)
        evals = [evaluate_model(model, ref, n=1000, seed=s, speed=(s == 0), train=train) for s in range(3)]
        row = {"name": name, "distill_s": seconds, "samples_per_s": evals[0]["samples_per_s"]}
        for key in ("fd", "kid", "recall", "class_accuracy", "classes_covered"):
            row[key] = sum(e[key] for e in evals) / 3
        rows.append(row)
        print(row, flush=True)
        (out / "msd.json").write_text(json.dumps(rows, indent=1))
        (out / "msd.md").write_text(table(rows, ["name", "fd", "kid", "recall", "class_accuracy", "classes_covered",
                                                 "samples_per_s", "distill_s"]) + "\n")


def run_msd2d(out: Path, only: list[str], only_rows: list[str]) -> None:
    """MSD (4 students) and one DMD2 student, both 1-step at their defaults, against the class-conditional exact
    teacher of each labelled 2-D preset: SWD against the held-out split (5000 samples, mean of 3 seeds)."""
    from distmatch.data import load_data
    from distmatch.methods import run_distill
    from distmatch.eval.evaluate import evaluate_model
    from distmatch.models import load_model
    from distmatch.teachers.train import train_teacher

    for data in only or ["8gaussians-labeled", "25gaussians-labeled"]:
        root = out / "msd2d" / data
        tdir = train_teacher(data, root / "teacher", overrides=QUIET)
        teacher = load_model(tdir)
        ref = load_data(data, split="test", spec=teacher.spec)
        rows = []
        plan = [("teacher", None, None, []), ("dmd2 1-step", root / "dmd2", "dmd2", []),
                ("msd 4 students, 1-step", root / "msd", "msd", []),
                ("msd 4 students, 1-step, DM stage only (msd.gan=false)", root / "msd-dm", "msd", ["msd.gan=false"])]
        for name, model_dir, method, extra in plan:
            if method and only_rows and model_dir.name not in only_rows:
                continue
            t0 = time.perf_counter()
            if method:
                run_distill(tdir, model_dir, method=method, overrides=QUIET + extra)
            seconds = round(time.perf_counter() - t0, 1) if method else None
            model = teacher if method is None else load_model(model_dir)
            evals = [evaluate_model(model, ref, n=5000, seed=s, speed=False) for s in range(3)]
            row = {"name": name, "nfe": evals[0]["nfe"], "distill_s": seconds}
            for key in ("swd", "modes_covered", "off_mode"):
                row[key] = sum(e[key] for e in evals) / 3
            row["x_teacher"] = row["swd"] / rows[0]["swd"] if rows else 1.0
            rows.append(row)
            print(data, row, flush=True)
        (root / "results.json").write_text(json.dumps(rows, indent=1))
        (root / "results.md").write_text(table(rows, ["name", "nfe", "swd", "x_teacher", "modes_covered", "off_mode",
                                                      "distill_s"]) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["compare", "fdiv", "msd", "msd2d"])
    ap.add_argument("--out", default="bench/out/methods")
    ap.add_argument("--only", default="")
    ap.add_argument("--rows", default="")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "compare":
        run_compare_all(out, [d for d in args.only.split(",") if d])
    elif args.part == "fdiv":
        run_fdiv(out, args.iters)
    elif args.part == "msd2d":
        run_msd2d(out, [d for d in args.only.split(",") if d], [r for r in args.rows.split(",") if r])
    else:
        run_msd(out, [r for r in args.rows.split(",") if r])


if __name__ == "__main__":
    main()
