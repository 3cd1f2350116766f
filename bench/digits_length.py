"""How does a 1-step dmd2 student of a small DDPM move as it trains longer, and what steadies its last weights?

On the digits DDPM teachers of bench/digits_vp.py a 1-step student started at σ 1.7 (what `--recipe
dmd2+low-start` sets), saved without an EMA as DMD2 does, scored 2.39 and 7.15 on two seeds at 2000 iterations.
This script follows such students further: each seed is trained in chunks of `--every` iterations up to `--to`
(a resumed run equals an uninterrupted one) and scored after each chunk from `--first` on, then the same seeds are
trained to `--variant-iters` once per variant, a settings list that changes only how the last weights are
reached (a cooled learning rate, an EMA):

    distmatch distill --teacher <out>/<schedule>/teacher --data digits --steps 1 --out S \
        --set student.start_sigma_max=1.7 train.ema=0 train.seed=N train.iters=I [variant settings]
    distmatch evaluate --model S --data digits --steps 1 --out S-itI.json

    python bench/digits_length.py --out bench/out/digits-vp [--schedule squaredcos_cap_v2] [--seeds 0 1]
        [--first 2000] [--to 8000] [--every 500] [--variant-iters 6000]
        [--variant cool train.cooldown=0.3333333333333333] [--variant ema train.ema=0.99]
        [--picture bench/results/digits_ddpm_1step_length.png]

The teacher is bench/digits_vp.py's (trained there if missing). Scores are Fréchet distances on the in-domain
digits classifier, 2000 samples against the 360 held-out digits. Every stage resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from digits_vp import cli, score, train  # noqa: E402  (the same teachers, commands and scoring)


def distill(teacher: Path, run: Path, seed: int, iters: int, *sets: str) -> None:
    cli("distill", "--teacher", str(teacher), "--data", "digits", "--steps", "1", "--out", str(run),
        "--set", "student.start_sigma_max=1.7", "train.ema=0", f"train.seed={seed}", f"train.iters={iters}",
        "train.progress=false", *sets)  # a variant's settings come last, so they win


def trained_to(run: Path) -> int:
    meta = run / "run.json"
    return json.loads(meta.read_text())["config"]["train"]["iters"] if meta.exists() else 0


def fd_at(teacher: Path, run: Path, seed: int, it: int, *sets: str) -> float:
    """FD of `run` trained to `it` iterations (trained there and scored unless its score is on disk)."""
    dest = run.parent / f"{run.name}-it{it}.json"
    if not dest.exists():
        distill(teacher, run, seed, it, *sets)
    return score(run, dest, "--steps", "1")["fd"]


def follow(teacher: Path, run: Path, seed: int, a) -> dict[int, float]:
    """FD after each chunk of `a.every` iterations from `a.first` to `a.to`, one run resumed chunk by chunk."""
    fd = {}
    for it in range(a.every, a.to + 1, a.every):
        dest = run.parent / f"{run.name}-it{it}.json"
        if it < a.first:
            continue
        if not dest.exists() and trained_to(run) > it:  # scored right after its chunk, or never
            print(f"seed {seed}, {it} iterations: not scored, the run is past it", flush=True)
            continue
        fd[it] = fd_at(teacher, run, seed, it)
        print(f"seed {seed}, {it} iterations: FD {fd[it]:.3f}", flush=True)
    return fd


def picture(path: Path, curves: dict, variants: dict, teacher_fd: float, iters: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (seed, fd), color in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(list(fd), list(fd.values()), "o-", color=color, label=f"constant rate, seed {seed}")
        for (name, per_seed), marker in zip(variants.items(), ("s", "^", "D")):
            ax.plot([iters], [per_seed[seed]], marker, color=color, ms=9, mfc="none",
                    label=f"{name}, seed {seed}")
    ax.axhline(teacher_fd, color="k", ls="--", lw=1, label="teacher, ancestral 1000")
    ax.set_xlabel("iterations")
    ax.set_ylabel("FD (in-domain classifier)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schedule", default="squaredcos_cap_v2")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--first", type=int, default=2000)
    p.add_argument("--to", type=int, default=8000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--variant-iters", type=int, default=6000)
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "SETTING"))
    p.add_argument("--teacher-iters", type=int, default=6000)
    p.add_argument("--picture", type=Path)
    a = p.parse_args()
    base = a.out / a.schedule
    teacher = train(base, a.schedule, a.teacher_iters)
    teacher_fd = score(teacher, base / "teacher-ancestral-1000.json", "--solver", "ancestral", "--steps", "1000")["fd"]
    curves = {seed: follow(teacher, base / f"length-seed{seed}", seed, a) for seed in a.seeds}
    variants = {}
    for name, *sets in a.variant:
        variants[name] = {}
        for seed in a.seeds:
            variants[name][seed] = fd_at(teacher, base / f"length-{name}-seed{seed}", seed, a.variant_iters, *sets)
    print(f"\nteacher (ancestral 1000): FD {teacher_fd:.3f}")
    print("| seed | " + " | ".join(str(i) for i in curves[a.seeds[0]]) + " | mean |")
    print("|---" * (len(curves[a.seeds[0]]) + 2) + "|")
    for seed, fd in curves.items():
        print(f"| {seed} | " + " | ".join(f"{v:.2f}" for v in fd.values()) + f" | {sum(fd.values()) / len(fd):.2f} |")
    for name, per_seed in variants.items():
        print(f"{name} at {a.variant_iters}: " + ", ".join(f"seed {s} {v:.3f}" for s, v in per_seed.items()))
    if a.picture:
        picture(a.picture, curves, variants, teacher_fd, a.variant_iters)
    json.dump({"teacher": teacher_fd, "curves": curves, "variants": variants},
              (base / "length.json").open("w"), indent=1)


if __name__ == "__main__":
    main()
