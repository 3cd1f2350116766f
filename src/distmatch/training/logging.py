"""Training logs: averaged records as JSON lines (log.jsonl) and TensorBoard events (tb/).

On resume, records past the checkpoint's iteration are dropped so the log reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .. import checkpoint as ckpt

LOG = "log.jsonl"


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill; the rest of the log is still good
        if isinstance(record, dict) and isinstance(record.get("it"), int):  # not ours otherwise
            records.append(record)
    return records


class RunLogger:
    def __init__(self, run_dir: Path, start: int, enabled: bool = True, window: dict | None = None):
        """`window`: the logs of a log interval that a checkpoint cut short (window() at that checkpoint), so a
        resumed run's next record averages the same steps as an uninterrupted run's."""
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float, (window or {}).get("sums", {}))
        self.counts: dict[str, int] = defaultdict(int, (window or {}).get("counts", {}))
        self.writer = None
        self.elapsed = 0.0  # training seconds before `start`: a resumed run's clock goes on from there
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOG
        kept = [r for r in read_log(run_dir) if r.get("it", 0) <= start]
        last = kept[-1].get("time") if kept else None
        self.elapsed = float(last) if isinstance(last, (int, float)) else 0.0
        ckpt.atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter

            # events after the checkpoint resumed from (logged before an interruption) go; its own step stays
            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start + 1 if start > 0 else None)
        except ImportError:  # tensorboard is a dependency, but logs must not depend on it
            self.writer = None

    def add(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            v = float(v)
            if math.isfinite(v):
                self.sums[k] += v
                self.counts[k] += 1

    def window(self) -> dict:
        """The logs added since the last record, for a checkpoint."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def flush(self, it: int, elapsed: float) -> dict:
        rec = {"it": it, "time": round(elapsed, 3)}
        rec.update({k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]})
        self.sums.clear()
        self.counts.clear()
        if self.enabled and len(rec) > 2:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.writer is not None:
                for k, v in rec.items():
                    if k not in ("it", "time"):
                        self.writer.add_scalar(k, v, it)
        return rec

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
