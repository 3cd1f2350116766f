"""`distmatch demo`: teacher -> DMD2 student -> side-by-side evaluation -> one HTML report.

Every stage is resumable (re-running the command picks up where it stopped) and the comparison is made in one
run: teacher at its recommended steps, teacher at the student's few steps, student.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..data import is_preset, load_data
from ..errors import UserError
from ..models import load_model, resolve_device
from ..training.logging import read_log
from .finished import finished_before, training_seconds


# The demo's distillation on vectors fits in a few minutes on 2 cores: more, smaller batches than the vector
# defaults (8 Gaussians: 1.9x the teacher's SWD against 3.0x for 1500 iterations of 1024 in about the same time).
DEMO_VECTOR_DISTILL = ["train.iters=3000", "train.batch_size=256"]


@contextmanager
def stage(name: str):
    """A setting of a stage refused by its key is named as the user typed it, with the stage's prefix."""
    try:
        yield
    except UserError as e:
        raise UserError(str(e).replace("config key '", f"config key '{name}.", 1)) from None


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Demo overrides are prefixed by the stage they configure: teacher.KEY=V or distill.KEY=V."""
    teacher, distill = [], []
    for item in overrides:
        stage, _, rest = item.partition(".")
        if stage == "teacher" and rest:
            teacher.append(rest)
        elif stage == "distill" and rest:
            distill.append(rest)
        else:
            raise UserError(f"demo --set keys start with teacher. or distill., got {item!r}")
    return teacher, distill


def evaluation_rows(teacher, student, reference, student_steps: int, n: int, train=None,
                    progress: bool = True) -> list[dict]:
    from ..eval.evaluate import evaluate_model

    rows = []
    # the teacher at the student's few steps with Euler: the same NFE (Heun's last correction at σ_min diverges
    # when the step from σ_max is that large)
    euler = teacher.with_solver("euler")
    plan = [("teacher", teacher, None)]
    if teacher.fitted_network() is not None:
        plan += [("teacher network", teacher.fitted_network(), None)]
    plan += [("teacher", euler, k) for k in sorted({1, 2, 4, student_steps})]
    plan += [("student", student, k) for k in range(1, student_steps + 1)]
    for name, model, steps in plan:
        r = evaluate_model(model, reference, n=n, steps=steps, train=train, progress=progress)
        solver = f", {model.config['solver']}" if name.startswith("teacher") else ""
        r["name"] = f"{name} {r['steps']}-step{solver}"
        rows.append(r)
    return rows


def sample_pictures(out: Path, rows_models, reference, kind: str, n: int = 2000) -> Path:
    from . import plots

    panels = [("data", reference.x[:n].numpy())]
    for title, model, steps in rows_models:
        x, _ = model.sample(n if kind == "vector" else 64, steps, seed=1)
        panels.append((f"{title} (NFE {model.nfe(steps)})", x.numpy()))
    if kind == "vector":  # points in the data's own units, as the user knows them
        panels = [(title, reference.spec.to_user(torch.from_numpy(x))) for title, x in panels]
        return plots.scatter_panels(panels, out / "samples.png")
    return plots.image_grid_panels(panels, out / "samples.png")


def headline(rows: list[dict], kind: str) -> str:
    key = "swd" if kind == "vector" else "fd"
    best = rows[0]
    # the student at its K steps (the rows also show it stopped after fewer)
    one = max((r for r in rows if r["kind"] == "student"), key=lambda r: r["steps"], default=rows[-1])
    # speed against the teacher's network (for an exact mixture teacher: the network fitted to it, as costly per
    # evaluation as the student's), quality against the teacher itself
    net = next((r for r in rows if r["name"].startswith("teacher network")), best)
    speedup = one.get("samples_per_s", 0) / max(net.get("samples_per_s", 1e-9), 1e-9)
    against = " than the teacher's network" if net is not best else ""
    return (f"{best['name']} ({best['nfe']} NFE): {key} {best[key]:.4g}; "
            f"student ({one['nfe']} NFE): {key} {one[key]:.4g} "
            f"= {one[key] / max(best[key], 1e-12):.2f}x the teacher's; sampling {speedup:.0f}x faster{against} "
            f"({net['nfe']} NFE)")


# what each column of the reports' metric tables measures, and which way is better
COLUMNS = {
    "swd": "sliced Wasserstein distance to the data (lower is better)",
    "mmd": "kernel MMD² (lower is better; unbiased, so it can dip just below 0 when the samples match the data)",
    "energy": "energy distance (lower is better; can dip just below 0 alike)",
    "modes_covered": "share of the mixture's modes that receive samples (higher is better)",
    "off_mode": "share of samples between the modes (lower is better)",
    "fd": "Fréchet distance of the features, FID on Inception's (lower is better)",
    "kid": "kernel distance of the features, KID on Inception's (lower is better; unbiased, can dip below 0)",
    "precision": "share of samples near the data (higher is better)",
    "recall": "share of the data near the samples (higher is better)",
    "classes_covered": "share of the classes the samples are classified into (higher is better)",
    "class_accuracy": "share of a class-conditional model's samples classified as their class (higher is better)",
    "samples_per_s": "sampling speed", "nfe": "network evaluations per sample",
}


def reading_notes(columns: list[str], rows: list[dict]) -> list[str]:
    """The lines under a metrics table: its rows, and its columns in words."""
    notes = ["Rows: \"teacher\" is the teacher as distmatch sample runs it; \"teacher K-step, euler\" the same "
             "teacher stopped after the student's few steps (what a few-step sampler gives without distillation)."]
    if any(r["name"].startswith("teacher network") for r in rows):
        notes[0] += (" For a Gaussian-mixture preset the teacher is its exact mixture (the target), and "
                     "\"teacher network\" the network fitted to it, which the student was distilled from.")
    return notes + ["; ".join(f"{c}: {COLUMNS[c]}" for c in columns if c in COLUMNS) + "."]


def scoring_line(data_name: str, rows: list[dict]) -> str:
    """What the metrics were measured against, and for images on which features."""
    against = ("the preset's held-out split" if is_preset(data_name) else
               f"{data_name} itself (a data file has no held-out split: the teacher trained on these data)")
    net = rows[0].get("feature_net")
    if net is None:
        return f"metrics against {against}"
    trained = rows[0].get("feature_net_trained_on")
    on = f"Inception features, {net}" if net.startswith("inception") else (
        f"the features of an in-domain {net} trained on the {trained} (no Inception weights named: "
        f"DISTMATCH_INCEPTION), comparable only within this report")
    return f"metrics against {against}; images scored on {on}"


def budget_line(student_dir: Path) -> str:
    run = json.loads((student_dir / "run.json").read_text())
    t = run["config"]["train"]
    return (f"student: {run['method']} as published, {len(run['levels'])}-step, {t['iters']} iterations at batch "
            f"{t['batch_size']} (a short run: converged figures at the full defaults are in bench/RESULTS.md)")


def write_demo_report(out: Path, data_name: str, rows: list[dict], teacher, student, reference,
                      timings: dict) -> Path:
    from . import plots
    from .html import metrics_table, write_report

    kind = teacher.spec.kind
    keys = ["swd", "mmd", "energy", "modes_covered", "off_mode"] if kind == "vector" else \
        ["fd", "kid", "precision", "recall", "classes_covered", "class_accuracy"]
    columns = ["name", "nfe"] + keys + ["samples_per_s"]
    steps = student.default_steps
    pictures = [("teacher", teacher, None), (f"teacher {steps}-step euler", teacher.with_solver("euler"), steps),
                ("student", student, steps)]
    sample_png = sample_pictures(out, pictures, reference, kind)
    curves_png = plots.curves(read_log(out / "student"), out / "curves.png")
    teacher_curves = read_log(out / "teacher")
    sections = [
        {"heading": "Summary", "text": [headline(rows, kind), budget_line(out / "student"),
                                         f"data: {data_name}: {teacher.spec.describe()}",
                                         scoring_line(data_name, rows)]},
        {"heading": "Samples", "images": [str(sample_png)]},
        {"heading": "Metrics", "table": metrics_table(rows, columns), "text": reading_notes(columns, rows)},
        {"heading": "Training curves (student)", "images": [str(curves_png)]},
        {"heading": "Wall-clock", "table": metrics_table([timings], list(timings))},
    ]
    if teacher_curves:
        sections.append({"heading": "Training curves (teacher)",
                         "images": [str(plots.curves(teacher_curves, out / "teacher_curves.png"))]})
    return write_report(out / "report.html", f"distmatch demo: {data_name}", sections)


def run_demo(data: str, out: str | None, steps: int = 1, config_file: str | None = None,
             overrides: list[str] | None = None, n_eval: int = 4000) -> Path | None:
    from ..methods import check_settings, run_distill
    from ..teachers.train import train_teacher

    if config_file:
        raise UserError("demo takes no --config; pass stage settings as --set teacher.KEY=V / distill.KEY=V")
    t_over, d_over = split_overrides(overrides or [])
    with stage("distill"):  # a typo must not wait for the teacher
        check_settings("dmd2", load_data(data).spec.kind, steps, d_over)
    out = Path(out or f"runs/demo-{Path(data).stem}")
    with stage("teacher"):
        train_teacher(data, out / "teacher", None, t_over)
    teacher_spec = load_model(out / "teacher").spec
    short = DEMO_VECTOR_DISTILL if teacher_spec.kind == "vector" else []
    run_distill(out / "teacher", out / "student", "dmd2", steps, None, short + d_over, data)
    if os.environ.get("RANK", "0") != "0":  # under a launcher the first process evaluates and writes the report
        return None
    record = {"data": data, "steps": steps, "overrides": list(overrides or []), "n_eval": n_eval}
    if finished_before(out / "metrics.json", record, [out / "teacher", out / "student"], out / "report.html"):
        done = json.loads((out / "metrics.json").read_text())
        print(f"{out} is finished: every run and its report are as they were", file=sys.stderr)
        print(headline(done["rows"], teacher_spec.kind))
        return out / "report.html"
    device = resolve_device("auto")  # the rows sample where the runs trained: a GPU when one is seen
    teacher, student = load_model(out / "teacher", device), load_model(out / "student", device)
    reference = load_data(data, split="test" if is_preset(data) else "train", spec=teacher.spec)
    t0 = time.perf_counter()
    n = n_eval if teacher.spec.kind == "vector" else min(n_eval, 1000)
    # the evaluation's bars follow the distillation's (--set distill.train.progress=false silences both)
    shown = json.loads((out / "student" / "run.json").read_text())["config"]["train"]["progress"]
    rows = evaluation_rows(teacher, student, reference, student.default_steps, n, progress=shown)
    timings = {"teacher_s": training_seconds(out / "teacher"), "distill_s": training_seconds(out / "student"),
               "evaluate_s": round(time.perf_counter() - t0, 1)}  # training times from the runs' logs
    report = write_demo_report(out, data, rows, teacher, student, reference, timings)
    ckpt.atomic_write_json(out / "metrics.json", {"args": record, "rows": rows, "timings": timings})  # the end
    print(headline(rows, teacher.spec.kind))
    print(json.dumps(timings))
    return report
