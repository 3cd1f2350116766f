"""The real teacher: a third-party MNIST DDPM (../shared/data/real-teachers/mnist-ddpm), distilled as a user would,
through wrap_teacher, with MNIST as the real data; every row scored on Inception-v3 features (FID and KID,
torchmetrics) against the MNIST test set, the same N for every row. The teacher cannot see an image's offset or contrast, so
its samples drift in both: every row is scored after stretching each image to [-1, 1], and "in range" says how many
needed no stretching.

    python bench/mnist.py --out bench/out/mnist --inception /path/to/default_1.pt [--n 1000] [--steps 1 4]
        [--set KEY=VALUE ...] [--students-only]

Rows: the teacher's own 1000-step ancestral sampler; distmatch's Heun at the teacher's default steps, its ancestral
sampler at 18 and 50 steps, Euler at 1 / 2 / 4 steps; 1- and 4-step dmd2 students (as published, image defaults;
`--method M` for another method's).
Each row's samples are saved under <out>/samples/ and each student is a resumable run folder, so re-running the
command picks up where it stopped. Writes <out>/results.json and <out>/results.md.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data"


def mnist_test() -> np.ndarray:
    raw = gzip.open(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Each image stretched to [-1, 1]: the teacher cannot see an image's offset or contrast (a LayerNorm over
    (C, H, W) opens every stage), so its samples drift in both and are shown this way; every row gets the same."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1


def in_range(x: torch.Tensor) -> float:
    """Share of images that need no stretching: every pixel within [-1.1, 1.1]."""
    return float((x.abs().amax(dim=(1, 2, 3)) <= 1.1).float().mean())


def rows_plan(teacher, students: dict) -> list[tuple[str, object]]:
    from mnist_ddpm import ancestral_sample

    own = teacher.loaded.init_net.net  # the user's network inside the wrapped teacher
    return [("teacher, 1000-step ancestral (its own)", (1000, lambda n, g: ancestral_sample(own, n, g)))] + \
        distmatch_rows(teacher, students)


def distmatch_rows(teacher, students: dict) -> list[tuple[str, object]]:
    """distmatch's Heun at the teacher's default steps, Euler at 1 / 2 / 4 steps, the ancestral sampler at 18 and
    50, and the students. Rows of a teacher whose scheduler clips x̂_0 say so (distmatch samples it clipped)."""
    euler, ancestral = teacher.loaded.with_solver("euler"), teacher.loaded.with_solver("ancestral")
    clipped = ", x0 clipped" if teacher.loaded.config.get("x0_limit") else ""

    def sampler(model, steps):
        return lambda n, g: model.sample(n, steps, seed=int(g.initial_seed()))[0]

    plan = [(f"teacher, Heun {teacher.default_steps} steps{clipped}", (teacher.nfe(), sampler(teacher.loaded, None)))]
    plan += [(f"teacher, ancestral {k} steps{clipped}", (k, sampler(ancestral, k))) for k in (18, 50)]
    plan += [(f"teacher, Euler {k} steps{clipped}", (k, sampler(euler, k))) for k in (1, 2, 4)]
    plan += [(f"{s.loaded.config['method']} student, {k} step{'s' * (k > 1)} from {trained_timesteps(s.loaded)}",
              (k, sampler(s.loaded, k))) for k, s in students.items()]
    return plan


def best_rows(teacher, out: Path, students: dict) -> list[tuple[str, object]]:
    """The best student each run kept by its own scores (train.eval_every), as rows beside the last."""
    import distmatch

    rows = []
    for k in students:
        if (folder := out / f"student-{k}" / "best").is_dir():
            best = distmatch.load(folder, network=copy.deepcopy(teacher.loaded.init_net.net)).loaded
            rows.append((f"best of the run's scores, {k} step{'s' * (k > 1)}, iteration {best.config['best']['it']}",
                         (k, lambda n, g, m=best, k=k: m.sample(n, k, seed=int(g.initial_seed()))[0])))
    return rows


def trained_timesteps(student) -> str:
    """'t = 726' or 't = 723/542/361/180': where a VP teacher's student starts its steps (rows and caches say it)."""
    t = student.denoiser.timestep(torch.tensor(student.config["sigmas"], dtype=torch.float64))
    return "t = " + "/".join(str(int(round(float(v)))) for v in t)


def distil(teacher, folder: Path, data: Path, k: int, settings: dict | None, method: str | None = None):
    """A K-step student in `folder`; a finished one is reused as it is (its row names its levels)."""
    import distmatch

    if (folder / "model.safetensors").exists():  # distilled from a network given in Python: load it with one
        return distmatch.load(folder, network=copy.deepcopy(teacher.loaded.init_net.net))
    return distmatch.distill(teacher, folder, data=str(data), method=method, steps=k, settings=settings)


def score_rows(plan, out: Path, n: int, weights: Path, prepare=minmax) -> list[dict]:
    """Each row's n samples (seed 0, saved under <out>/samples/) scored on Inception features against the first n
    MNIST test digits; a row scored by an earlier run is read back, not redone."""
    from distmatch.data import from_arrays
    from distmatch.eval.inception import inception_metrics

    reference = from_arrays(mnist_test()[:n])  # uint8 0..255 -> [-1, 1], as the students see MNIST
    (out / "samples").mkdir(parents=True, exist_ok=True)
    results = []
    for name, (nfe, sample) in plan:
        stem = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("/", "-")
        path = out / "samples" / (stem + ".pt")
        scored = path.with_suffix(".json")
        if scored.exists():
            results.append(json.loads(scored.read_text()))
            continue
        if path.exists():
            x, seconds = torch.load(path)
        else:
            t0 = time.perf_counter()
            x = sample(n, torch.Generator().manual_seed(0))
            x, seconds = x if isinstance(x, tuple) else (x, time.perf_counter() - t0)  # or the sampler's own clock
            torch.save((x, seconds), path)
        row = {"name": name, "nfe": nfe, "samples_per_s": n / seconds, "in_range": in_range(x)}
        row.update(inception_metrics(prepare(x), reference, weights, out / "cache"))
        scored.write_text(json.dumps(row, indent=1))
        results.append(row)
        print(row, flush=True)
    return results


def print_clamped_rows(plan, out: Path, n: int, inception: str | None) -> None:
    """score_rows on images clamped to [-1, 1] (as a diffusers pipeline returns them), a line per row."""
    from distmatch.eval.inception import inception_path

    for row in score_rows(plan, out, n, inception_path(inception), prepare=lambda x: x.clamp(-1, 1)):
        print(row["name"], row["nfe"], round(row["fd"], 2), round(row["kid"] * 1e3, 1), round(row["precision"], 3),
              round(row["recall"], 3), f"{row['samples_per_s']:.3g} samples/s", flush=True)


def write_table(results: list[dict], distill_s: dict, out: Path, teacher_first: bool = True) -> str:
    (out / "results.json").write_text(json.dumps({"rows": results, "distill_s": distill_s}, indent=1))
    lines = ["| row | NFE | FID | x teacher | KID x1e3 | precision | recall | in range | samples/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = results[0]["fd"] if teacher_first else float("nan")  # "x teacher" needs the teacher's row
    lines += [f"| {r['name']} | {r['nfe']} | {r['fd']:.2f} | {r['fd'] / base:.2f} | {r['kid'] * 1e3:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['in_range']:.2f} | {r['samples_per_s']:.3g} |"
              for r in results]
    table = "\n".join(lines) + f"\n\ndistillation s: {distill_s}\n"
    (out / "results.md").write_text(table)
    return table


def main():
    from distmatch.eval.inception import inception_path
    from throughput import mnist_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/mnist")
    ap.add_argument("--inception", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=None, help="distillation iterations (default: the image default)")
    ap.add_argument("--steps", type=int, nargs="*", default=[1, 4], help="the students to distil (none: teacher rows)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="distillation settings, as `distmatch distill --set` takes them")
    ap.add_argument("--method", default=None, help="the students' method (default dmd2)")
    ap.add_argument("--students-only", action="store_true", help="score the students' rows only")
    ap.add_argument("--look", action="store_true", help="only print value ranges of 64 samples per model and save "
                    "grids (finished students only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.look:
        return look(out, mnist_teacher(SHARED), args.steps)
    weights = inception_path(args.inception)
    data = mnist_train(out)
    teacher = mnist_teacher(SHARED)
    students, distill_s = {}, {}
    settings = {key: yaml.safe_load(v) for key, v in (kv.split("=", 1) for kv in args.set)}
    settings |= {"train.iters": args.iters} if args.iters else {}
    for k in args.steps:
        students[k] = distil(teacher, out / f"student-{k}", data, k, settings, args.method)
        distill_s[k] = training_seconds(out / f"student-{k}")
    plan = rows_plan(teacher, students)
    plan = plan[-len(students):] if args.students_only else plan
    plan += best_rows(teacher, out, students)
    print(write_table(score_rows(plan, out, args.n, weights), distill_s, out, not args.students_only))


def look(out: Path, teacher, steps) -> None:
    """Value ranges of 64 samples (seed 0) of the teacher (Heun, Euler 1 = a 1-step student's starting point) and of
    each finished student, and a grid of 16 of them stretched to [-1, 1] (<out>/look-<name>.png)."""
    import distmatch
    from PIL import Image

    models = {"teacher-heun": (teacher.loaded, None), "teacher-euler1": (teacher.loaded.with_solver("euler"), 1)}
    for k in steps:
        if (out / f"student-{k}" / "model.safetensors").exists():
            student = distmatch.load(out / f"student-{k}", network=teacher.loaded.init_net.net)
            models[f"student-{k}"] = (student.loaded, k)
    for name, (model, k) in models.items():
        x = model.sample(64, k, seed=0)[0]
        lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
        print(f"{name}: image minima {lo.min():.1f} .. {lo.max():.1f}, maxima {hi.min():.1f} .. {hi.max():.1f}, "
              f"in range {in_range(x):.2f}")
        grid = minmax(x[:16]).add(1).mul(127.5).byte().reshape(4, 4, 28, 28).permute(0, 2, 1, 3).reshape(112, 112)
        Image.fromarray(grid.numpy()).resize((224, 224), Image.NEAREST).save(out / f"look-{name}.png")


def mnist_train(out: Path) -> Path:
    """The 20,000 MNIST training digits as a .npy file (uint8, N x 28 x 28), as a user would hand them over."""
    data = out / "mnist20k.npy"
    if not data.exists():
        np.save(data, np.load(SHARED / "mnist" / "train20k-images.npz")["arr_0"])
    return data


def training_seconds(run: Path) -> float:
    """A run's training wall-clock, summed over resumes (its log's clock)."""
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])["time"]


if __name__ == "__main__":
    main()
