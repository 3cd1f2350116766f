"""`distmatch compare`: several methods against one teacher, one report.

Each distillation runs in its own process so its wall-clock and peak memory are its own; every run folder is
resumable, so re-running the command picks up where it stopped and re-uses finished students.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..data import is_preset, load_data
from ..errors import UserError
from ..models import load_model, resolve_device
from ..training.logging import read_log
from .finished import finished_before, training_seconds

# So the whole comparison fits in about 10 minutes on 2 cores; raise it with --set train.iters=N.
COMPARE_ITERS = {"vector": 2000, "image": 1500}
DEFAULT_STEPS = {"tdm": 4}


def parse_plan(methods: str, steps: str | None) -> list[tuple[str, int]]:
    """(name, K) per entry of --methods; a name is a method (run as published) or a recipe."""
    from ..methods import METHODS
    from ..methods.recipes import RECIPES

    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS and m not in RECIPES]
    if not names or unknown:
        raise UserError(f"--methods: unknown method or recipe {unknown[0] if unknown else '(none given)'!r} "
                        f"(methods: {', '.join(METHODS)}; recipes: {', '.join(RECIPES)})")
    if steps is None:
        entries = [(m, DEFAULT_STEPS.get(method_of(m), 1)) for m in names]
    else:
        ks = [s.strip() for s in steps.split(",")]
        if len(ks) == 1:
            ks = ks * len(names)
        if len(ks) != len(names) or not all(k.isdigit() and int(k) >= 1 for k in ks):
            raise UserError(f"--steps must be one K >= 1 or one per method ({len(names)}), got {steps!r}")
        entries = list(zip(names, map(int, ks)))
    if twice := [e for i, e in enumerate(entries) if e in entries[:i]]:
        raise UserError(f"--methods: {twice[0][0]} at {twice[0][1]} step(s) is listed twice; list each once")
    return entries


def check_plan(plan: list[tuple[str, int]], data: str, overrides: dict[str, list[str]] | None = None,
               own_teacher: bool = True) -> None:
    """Refuse, before anything is trained, what the data cannot run: msd without labels, a recipe outside the
    data and step counts it was measured on, one that acts on ε-predicting teachers when compare trains its own
    (they predict x̂_0), or a method's settings (`overrides` per entry) that its run would refuse."""
    from ..methods import check_settings
    from ..methods.recipes import RECIPES, recipe_settings

    found = load_data(data)
    for name, k in plan:
        recipe = name if name in RECIPES else None
        check_settings(None if recipe else name, found.spec.kind, k, (overrides or {}).get(name, []), recipe)
    if any(method_of(m) == "msd" for m, _ in plan) and found.labels is None:
        raise UserError("msd needs class labels; compare it on labelled data (e.g. 8gaussians-labeled, digits)")
    for name, k in plan:
        if name in RECIPES:
            recipe_settings(name, found.spec.kind, k)
            if RECIPES[name].epsilon_only and own_teacher:
                raise UserError(f"recipe '{name}' acts on the students of ε-predicting teachers; compare trains its "
                                f"own teacher, which predicts x̂_0: give your ε teacher with --teacher")


def method_of(name: str) -> str:
    """The method a --methods entry runs: itself, or the method of a recipe."""
    from ..methods.recipes import RECIPES

    return RECIPES[name].method if name in RECIPES else name


def route_overrides(overrides: list[str], methods: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """teacher.KEY -> the teacher; METHOD.KEY -> that method's entries (recipes of it too); train.* / student.* ->
    every entry."""
    teacher, per_method = [], {m: [] for m in methods}
    for item in overrides:
        head, _, rest = item.partition(".")
        if head == "teacher" and rest:
            teacher.append(rest)
        elif head in map(method_of, per_method):
            for m in per_method:
                if method_of(m) == head:
                    per_method[m].append(item)
        elif head in ("train", "student"):
            for m in per_method:
                per_method[m].append(item)
        else:
            raise UserError(f"compare --set keys start with teacher., train., student. or a method name, got {item!r}")
    return teacher, per_method


def default_jobs(n_methods: int) -> int:
    """Distillations run at once: on a CPU-only machine one per core (small networks use one thread well and
    several poorly), with an accelerator one at a time."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(n_methods, os.cpu_count() or 1))


# The relative cost of one iteration at compare's settings (8 Gaussians, batch 1024, two runs at once, one thread
# each, 2000 iterations: dmd2 and dmd 180 s, fdistill 256 s, tdm 4-step 419 s), times 1 + (K-1)/4 for a K-step
# student; used only to start the longest runs first, so the last to finish is a short one.
RELATIVE_COST = {"dmd2": 1.0, "dmd": 1.0, "msd": 1.0, "fdistill": 1.4, "tdm": 1.4}


def expected_cost(method: str, k: int) -> float:
    return RELATIVE_COST.get(method, 1.0) * (1 + (k - 1) / 4)


def run_methods(jobs_list: list[tuple[Path, str, int, list[str]]], teacher_dir: Path, jobs: int,
                data: str | None = None) -> list[dict]:
    """Each distillation (on `data`, else the teacher's own) in a child process, up to `jobs` at once (the threads
    this process may use, shared evenly between them), the costliest first; once none is left to start, the runs
    still going share the threads of those that finished (trainer.follow_thread_budget). Returns each one's peak resident memory (its own, read
    from /proc while it runs; None where /proc does not say), in the order given; its time is in its log."""
    import torch

    from ..eval.speed import peak_rss_mb
    from ..training.trainer import THREADS_FILE_ENV

    total = max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    threads = max(1, total // jobs)
    pending = sorted(enumerate(jobs_list), key=lambda item: -expected_cost(method_of(item[1][1]), item[1][2]))
    running, costs, peaks = {}, [None] * len(jobs_list), [None] * len(jobs_list)
    budget_files = [out.with_name(f".{out.name}.threads") for out, *_ in jobs_list]
    try:
        while pending or running:
            while pending and len(running) < jobs:
                i, (out, method, k, overrides) = pending.pop(0)
                which = ["--recipe" if method != method_of(method) else "--method", method]
                cmd = [sys.executable, "-m", "distmatch.cli", "distill", "--teacher", str(teacher_dir), "--out",
                       str(out), *which, "--steps", str(k), *(["--data", data] if data else [])]
                for item in overrides:
                    cmd += ["--set", item]
                budget_files[i].parent.mkdir(parents=True, exist_ok=True)
                ckpt.atomic_write_bytes(budget_files[i], str(threads).encode())
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), THREADS_FILE_ENV: str(budget_files[i])}
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
                running[proc.pid] = (i, method, proc)
            pid, status, _ = os.wait4(-1, os.WNOHANG)
            if pid == 0:  # none finished: note each one's peak so far (it only grows), look again shortly
                for child, (i, *_) in running.items():
                    peaks[i] = peak_rss_mb(child) or peaks[i]
                time.sleep(0.2)
                continue
            if pid not in running:
                continue
            i, method, proc = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise UserError(f"distilling with {method} failed (exit {proc.returncode}); see the message above")
            costs[i] = {"peak_mb": round(peaks[i], 1) if peaks[i] else None, "parallel_jobs": jobs}
            if not pending and running:  # a core fell idle with nothing left to start: the others may use it
                for j, *_ in running.values():
                    ckpt.atomic_write_bytes(budget_files[j], str(max(1, total // len(running))).encode())
    finally:
        for _, _, proc in running.values():  # a failure or Ctrl-C: the others stop too (each can resume)
            proc.terminate()
            proc.wait()
        for path in budget_files:
            path.unlink(missing_ok=True)
    return costs


def own_length(overrides: list[str], iters: int) -> list[str]:
    """compare's short length, unless the user's --set gives one (each key reaches a run once)."""
    return [] if any(o.split("=", 1)[0].strip() == "train.iters" for o in overrides) else [f"train.iters={iters}"]


def run_compare(data: str | None, methods: str, steps: str | None, out: str | None, config_file: str | None,
                overrides: list[str] | None, jobs: int | None = None, teacher: str | None = None) -> Path:
    """Every method of `methods` distilled from one teacher (`teacher`, a folder of the user's, or one trained on
    `data`), scored against `data` in one report."""
    from ..eval.evaluate import evaluate_model
    from ..teachers.train import train_teacher
    from .demo import stage

    if config_file:
        raise UserError("compare takes no --config; use --set teacher.KEY=V, --set train.KEY=V, --set METHOD.KEY=V")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("compare runs its methods as processes of its own (--jobs); run it without a launcher")
    if teacher is not None and data is None:
        raise UserError("compare --teacher needs --data: data of the teacher's shape to distil on and score against")
    data = data or "8gaussians"
    plan = parse_plan(methods, steps)
    t_over, m_over = route_overrides(overrides or [], [m for m, _ in plan])
    if teacher is not None and t_over:
        raise UserError(f"--set teacher.{t_over[0]} sets the teacher compare trains; --teacher gives one already")
    check_plan(plan, data, m_over, own_teacher=teacher is None)
    out = Path(out or f"runs/compare-{Path(data).stem}")
    given = Path(teacher) if teacher is not None else None  # a teacher of the user's: its students distil on data
    with stage("teacher"):
        teacher_dir = given or train_teacher(data, out / "teacher", None, t_over)
    teacher = load_model(teacher_dir)  # on the CPU while the runs distil: the GPU is theirs
    if teacher.kind != "teacher":
        raise UserError(f"--teacher {teacher_dir} holds a {teacher.kind}, not a teacher")
    kind = teacher.spec.kind
    work = [(out / f"{method}-{k}step", method, k, own_length(m_over[method], COMPARE_ITERS[kind]) + m_over[method])
            for method, k in plan]
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    costs = run_methods(work, teacher_dir, jobs or default_jobs(len(plan)), data if given else None)
    record = {"data": data, "plan": [[m, k] for m, k in plan], "overrides": list(overrides or []),
              **({"teacher": str(given.resolve())} if given else {})}
    if finished_before(out / "compare.json", record, ([] if given else [teacher_dir]) + [d for d, *_ in work],
                       out / "report.html"):
        print(f"{out} is finished: every run and its report are as they were", file=sys.stderr)
        return out / "report.html"
    device = resolve_device("auto")  # the rows sample where the runs trained: a GPU when one is seen
    if device.type != "cpu":
        teacher = load_model(teacher_dir, device)
    reference = load_data(data, split="test" if is_preset(data) else "train", spec=teacher.spec)
    n = 4000 if kind == "vector" else 1000
    rows = [dict(evaluate_model(teacher, reference, n=n), name=f"teacher ({teacher.config['solver']})",
                 train_s=training_seconds(teacher_dir))]
    if teacher.fitted_network() is not None:  # what sampling costs with a network (the closed form is cheaper)
        rows.append(dict(evaluate_model(teacher.fitted_network(), reference, n=n),
                         name=f"teacher network ({teacher.config['solver']})"))
    students = []
    for (method, k), (run_dir, *_), cost in zip(plan, work, costs):
        student = load_model(run_dir, device)
        students.append((method, k, student, run_dir))
        rows.append(dict(evaluate_model(student, reference, n=n), name=f"{method} {k}-step", **cost,
                         distill_s=training_seconds(run_dir)))
        if all(r["name"] != f"teacher {k}-step, euler" for r in rows):  # the teacher at the same NFE
            rows.append(dict(evaluate_model(teacher.with_solver("euler"), reference, n=n, steps=k),
                             name=f"teacher {k}-step, euler"))
    report = write_compare_report(out, data, rows, teacher, students, reference)
    ckpt.atomic_write_json(out / "compare.json", {"args": record, "rows": rows})  # last: it marks the end
    return report


def budgets(students) -> str:
    """How long each method trained (a comparison of short runs must not read as one of full ones)."""
    def budget(run_dir: Path) -> str:
        t = json.loads((run_dir / "run.json").read_text())["config"]["train"]
        return f"{t['iters']} iterations at batch {t['batch_size']}"
    return "runs: " + "; ".join(f"{m} {k}-step, {budget(d)}" for m, k, _, d in students)


def write_compare_report(out: Path, data: str, rows: list[dict], teacher, students, reference) -> Path:
    from . import plots
    from .demo import reading_notes, scoring_line
    from .html import metrics_table, write_report

    kind = teacher.spec.kind
    metric = "swd" if kind == "vector" else "fd"
    keys = ["swd", "mmd", "modes_covered", "off_mode"] if kind == "vector" else ["fd", "kid", "recall", "classes_covered"]
    columns = ["name", "nfe"] + keys + ["samples_per_s", "train_s", "distill_s", "peak_mb"]
    n_show = 2000 if kind == "vector" else 64
    panels = [("data", reference.x[:n_show].numpy()),
              (f"teacher (NFE {teacher.nfe()})", teacher.sample(n_show, seed=1)[0].numpy())]
    panels += [(f"{m} {k}-step", s.sample(n_show, seed=1)[0].numpy()) for m, k, s, _ in students]
    if kind == "vector":  # points in the data's own units, as the user knows them
        panels = [(title, teacher.spec.to_user(torch.from_numpy(x))) for title, x in panels]
    pics = plots.scatter_panels(panels, out / "samples.png") if kind == "vector" else \
        plots.image_grid_panels(panels, out / "samples.png")
    sections = [
        {"heading": "Methods against one teacher", "text": [
            f"data: {data}; teacher: {teacher.path or 'trained on them'}, {teacher.config['solver']} "
            f"{teacher.default_steps} steps "
            f"(NFE {teacher.nfe()}); lower {metric} is better.", scoring_line(data, rows), budgets(students)]},
        {"heading": "Metrics", "table": metrics_table(rows, columns), "text": reading_notes(columns, rows)},
        {"heading": metric, "images": [str(plots.metric_bars(rows, metric, out / "bars.png"))]},
        {"heading": "Samples", "images": [str(pics)]},
    ]
    curves = [str(plots.curves(read_log(d), out / f"curves-{d.name}.png")) for _, _, _, d in students]
    sections.append({"heading": "Training curves", "images": curves})
    return write_report(out / "report.html", f"distmatch compare: {data}", sections)
