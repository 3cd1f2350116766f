"""Plot the scores runs kept while they trained (`train.eval_every`): one line per run folder, its best marked.

    python bench/plot_scores.py RUN [RUN ...] --out scores.png [--label NAME ...] [--point "NAME:IT=FID,IT=FID"]
        [--hline "NAME=VALUE"]

`--point` adds marks scored elsewhere (e.g. a bench's own FID of the same students), `--hline` a reference level.
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_scores(run: Path) -> tuple[str, list[int], list[float], dict]:
    stored = json.loads((run / "scores.json").read_text())
    metric = stored["metric"]
    its = [s["it"] for s in stored["scores"]]
    return metric, its, [s[metric] for s in stored["scores"]], stored["best"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", nargs="*", default=[])
    ap.add_argument("--point", nargs="*", default=[], help='"NAME:IT=VALUE,IT=VALUE"')
    ap.add_argument("--hline", nargs="*", default=[], help='"NAME=VALUE"')
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, run in enumerate(args.runs):
        metric, its, values, best = read_scores(run)
        label = args.label[i] if i < len(args.label) else str(run)
        line, = ax.plot(its, values, "-o", ms=3, label=f"{label} ({metric}, as it trains)")
        ax.plot([best["it"]], [best[metric]], "*", ms=14, color=line.get_color())
    for spec in args.point:
        name, pairs = spec.split(":", 1)
        pts = [tuple(float(v) for v in p.split("=")) for p in pairs.split(",")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--", ms=5, label=name)
    for spec in args.hline:
        name, value = spec.rsplit("=", 1)
        ax.axhline(float(value), color="grey", ls=":", label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("FID")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
