"""bench/mnist_diffusers.py's teacher and its dmd2 students on one GPU, trained past the CPU's budget.

The same diffusers-recipe teacher (5000 iterations) and the same commands a user runs (`distmatch distill` at the
defaults, resumed with a larger `train.iters`), on a GPU with a time budget: each student is sampled at the default
2000 iterations and again at the most iterations the budget allows. Samples (N, seed 0, in [-1, 1]) come back as
.npz files; the Inception scoring runs on any machine afterwards.

    python bench/mnist_diffusers_gpu.py teacher --work W --data mnist20k.npy        # optional, on a CPU
    python bench/mnist_diffusers_gpu.py run --work DIR --data mnist20k.npy --samples OUT --budget 480 \
        [--teacher W/teacher]
    python bench/mnist_diffusers_gpu.py score --samples OUT --out bench/out/mnist-gpu --inception default_1.pt
        [--picture bench/results/mnist_diffusers_gpu.png]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

# name: (K, seed, more `distmatch distill` arguments); `run --students` picks some, the first three by default
STUDENTS = {"k4-seed0": (4, 0, ()), "k1-seed0": (1, 0, ()), "k4-seed1": (4, 1, ()),
            "k1-low-seed0": (1, 0, ("--recipe", "dmd2+low-start")),
            "k1-low-seed1": (1, 1, ("--recipe", "dmd2+low-start")),
            "k4-t60-seed0": (4, 0, ("--set", "student.timesteps=[723,542,361,60]")),
            "k4-nogan-seed0": (4, 0, ("--set", "dmd2.gan=false"))}
DEFAULT_STUDENTS = ["k4-seed0", "k1-seed0", "k4-seed1"]
RESERVE = 30.0  # seconds kept for sampling and saving after the last stage


def save_npz(dest: Path, arrays: dict) -> None:
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, dest)


def log(samples: Path, name: str, **record) -> None:
    with open(samples / "log.jsonl", "a") as f:  # one line per write: the processes' lines do not mix
        f.write(json.dumps({"name": name, "t": round(time.time(), 1), **record}) + "\n")
    print(name, record, flush=True)


def last_logged(run: Path) -> dict:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])


def distill(teacher: Path, data: Path, run: Path, k: int, seed: int, more: tuple, iters: int,
            deadline: float) -> bool:
    """`distmatch distill` to `iters`; interrupted (Ctrl-C: it checkpoints) when the deadline comes, then finished at
    the iteration it reached. True when it got to `iters`."""
    cmd = [sys.executable, "-m", "distmatch", "distill", "--teacher", str(teacher), "--data", str(data),
           "--steps", str(k), "--out", str(run), "--set", f"train.seed={seed}", "--set", "train.progress=false",
           *more]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd + ["--set", f"train.iters={iters}"], env=env)
    while proc.poll() is None:
        if time.time() > deadline:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            if not (run / "log.jsonl").exists():
                return False  # stopped before its first iteration
            reached = int(last_logged(run)["it"])
            subprocess.run(cmd + ["--set", f"train.iters={reached}"], env=env, check=True)
            return False
        time.sleep(1.0)
    if proc.returncode:
        raise RuntimeError(f"distill exited with {proc.returncode}")
    return True


def sample_student(run: Path, n: int) -> tuple[np.ndarray, float]:
    from distmatch.models import load_model

    model = load_model(run, device="cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    x, _ = model.sample(n, seed=0)  # on the model's device, the result on the CPU
    return x.float().clamp(-1, 1).cpu().numpy().astype(np.float16), time.perf_counter() - t0


def grow(name: str, work: Path, data: Path, samples: Path, n: int, deadline: float) -> None:
    """One student: distilled to 2000 iterations (the default), sampled, then resumed as far as the budget goes."""
    from distmatch.checkpoint import MODEL

    k, seed, more = STUDENTS[name]
    run, out = work / f"student-{name}", samples / f"{name}.npz"
    arrays, target, started = {}, 2000, time.time()
    while True:
        finished = distill(work / "teacher", data, run, k, seed, more, target, deadline - RESERVE)
        if not (run / MODEL).exists():
            log(samples, name, error="no iteration finished within the budget")
            return
        reached = int(last_logged(run)["it"])
        x, seconds = sample_student(run, n)
        arrays[f"it{reached}"] = x
        arrays[f"it{reached}_seconds"] = np.array([seconds, last_logged(run)["time"]])
        save_npz(out, arrays)
        log(samples, name, it=reached, sample_s=round(seconds, 2), train_s=last_logged(run)["time"])
        if not finished:
            return
        per_iter = (time.time() - started) / reached
        room = int((deadline - RESERVE - time.time()) / per_iter * 0.9) // 500 * 500
        if room < 1000:
            return
        target = reached + room


def teacher_rows(folder: Path, samples: Path, n: int) -> None:
    from diffusers import DDPMPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = DDPMPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    arrays = {}
    for steps in (1000, 50):
        t0 = time.perf_counter()
        images = pipe(batch_size=n, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="np").images
        seconds = time.perf_counter() - t0
        arrays[f"steps{steps}"] = (images.transpose(0, 3, 1, 2) * 2 - 1).astype(np.float16)
        arrays[f"steps{steps}_seconds"] = np.array([seconds])
        save_npz(samples / "teacher.npz", arrays)
        log(samples, "teacher", steps=steps, seconds=round(seconds, 2))


def run(args) -> None:
    from mnist_diffusers import train

    start = time.time()
    deadline = start + args.budget
    work, samples = Path(args.work), Path(args.samples)
    work.mkdir(parents=True, exist_ok=True)
    samples.mkdir(parents=True, exist_ok=True)
    if args.teacher and not (work / "teacher").exists():  # a teacher trained elsewhere by mnist_diffusers.train
        shutil.copytree(args.teacher, work / "teacher")
    if args.train_state and not (work / "train-state.pt").exists():  # its training, part-done elsewhere: resumed
        shutil.copy(args.train_state, work / "train-state.pt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    folder = train(work, np.load(args.data), args.train_iters, device)
    if not args.teacher:
        log(samples, "teacher", train_s=round(time.time() - t0, 1), iters=args.train_iters, device=device)
        shutil.make_archive(str(samples / "teacher-folder"), "tar", work, "teacher")  # the teacher comes back too
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = [subprocess.Popen([sys.executable, __file__, "grow", name, "--work", str(work), "--data", args.data,
                               "--samples", str(samples), "--n", str(args.n), "--deadline", str(deadline)], env=env)
             for name in args.students]
    teacher_rows(folder, samples, args.n)
    for p in procs:
        p.wait()
    log(samples, "done", seconds=round(time.time() - start, 1))


def score(args) -> None:
    from distmatch.eval.inception import inception_path
    from mnist import score_rows

    samples, out = Path(args.samples), Path(args.out)
    plan = []
    for file in sorted(samples.glob("*.npz")):
        z = np.load(file)
        for key in sorted((k for k in z.files if not k.endswith("_seconds")), key=lambda k: int(k.lstrip("itseps"))):
            x, seconds = torch.from_numpy(z[key].astype(np.float32)), float(z[key + "_seconds"][0])
            if file.stem == "teacher":
                name, nfe = f"teacher, {key[5:]}-step DDPMPipeline (its own)", int(key[5:])
            else:
                k, seed, more = STUDENTS[file.stem]
                extra = f" ({' '.join(more)})" if more else ""
                name, nfe = f"dmd2 student, {k} step{'s' * (k > 1)}{extra}, seed {seed}, {key[2:]} iterations", k
            plan.append((name, (nfe, lambda n, g, x=x, s=seconds: (x[:n], s))))
    for row in score_rows(plan, out, args.n, inception_path(args.inception), prepare=lambda x: x.clamp(-1, 1)):
        print(json.dumps(row))
    if args.picture:  # the first 32 samples of every row, side by side
        from distmatch.report.plots import image_grid_panels

        panels = [(name.replace("dmd2 student, ", "").replace(" DDPMPipeline (its own)", ""),
                   sample(32, None)[0].numpy()) for name, (_, sample) in plan]
        print(image_grid_panels(panels, args.picture, nrow=4, max_images=32))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--samples", required=True)
    r.add_argument("--budget", type=float, default=480)
    r.add_argument("--train-iters", type=int, default=5000)
    r.add_argument("--teacher", default=None, help="a trained teacher folder (skips training)")
    r.add_argument("--train-state", default=None, help="a teacher's part-done train-state.pt to resume")
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--threads", type=int, default=4)
    r.add_argument("--students", nargs="*", default=DEFAULT_STUDENTS, choices=list(STUDENTS))
    g = sub.add_parser("grow")
    g.add_argument("name", choices=list(STUDENTS))
    for a in ("--work", "--data", "--samples"):
        g.add_argument(a, required=True)
    g.add_argument("--n", type=int, default=1000)
    g.add_argument("--deadline", type=float, required=True)
    t = sub.add_parser("teacher", help="train the teacher only (on a CPU, say), for `run --teacher`")
    t.add_argument("--work", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--train-iters", type=int, default=5000)
    t.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score")
    s.add_argument("--samples", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--inception", default=None)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--picture", default=None, help="a PNG of each row's first samples")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args)
    elif args.cmd == "teacher":
        from mnist_diffusers import train

        torch.set_num_threads(args.threads)
        Path(args.work).mkdir(parents=True, exist_ok=True)
        print(train(Path(args.work), np.load(args.data), args.train_iters))
    elif args.cmd == "grow":
        grow(args.name, Path(args.work), Path(args.data), Path(args.samples), args.n, args.deadline)
    else:
        score(args)


if __name__ == "__main__":
    main()
