"""A copy of a finished run whose saved student is its last checkpoint's raw generator instead of the EMA.

    python bench/raw_generator.py RUN OUT

OUT is a run folder like RUN (score it with bench/score_students.py or `distmatch evaluate`). The EMA never feeds
back into training, so OUT is the student the same command would have saved with `--set train.ema=0`.
"""
import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def main(run: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "run.json", "log.jsonl"):
        if (run / name).exists():
            shutil.copy(run / name, out / name)
    with safe_open(run / "model.safetensors", "pt") as model, safe_open(run / "checkpoint.safetensors", "pt") as ckpt:
        # model keys are "gen.<param>", the checkpoint's "module/gen/<param>" (raw) and "module/ema/<param>"
        names = {key: key.removeprefix("gen.") for key in model.keys()}
        if any(not ckpt.get_tensor(f"module/ema/{p}").equal(model.get_tensor(k)) for k, p in names.items()):
            sys.exit(f"{run}: its model is not its last checkpoint's EMA (was it resumed after saving?)")
        raw = {key: ckpt.get_tensor(f"module/gen/{p}") for key, p in names.items()}
        save_file(raw, out / "model.safetensors", metadata=model.metadata())
    print(f"{out}: the raw generator of {run}'s last checkpoint")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
