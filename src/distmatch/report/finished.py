"""What `demo` and `compare` keep of finished work: the runs' own training times, and whether a comparison was
already scored, so that re-running a finished command changes nothing."""
from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint as ckpt
from ..training.logging import read_log


def training_seconds(run_dir: Path) -> float | None:
    """A run's training wall-clock from its log, summed over the processes that resumed it."""
    times = [r["time"] for r in read_log(run_dir) if isinstance(r.get("time"), (int, float))]
    return times[-1] if times else None


def finished_before(path: Path, record: dict, run_dirs: list[Path], report: Path) -> bool:
    """Whether `path` (the scores, written last) holds `record` and was written after every run had finished:
    re-running the command then changes nothing (scoring again would rewrite the report with new speed figures)."""
    if not (path.is_file() and report.is_file()):
        return False
    try:
        stored = json.loads(path.read_text()).get("args")
    except (ValueError, AttributeError):  # damaged or from an older version: score again
        return False
    written = path.stat().st_mtime
    return stored == record and all((d / ckpt.MODEL).is_file() and (d / ckpt.MODEL).stat().st_mtime <= written
                                    for d in run_dirs)
