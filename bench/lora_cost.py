"""What `student.lora_rank` saves: the generator's trainable parameters, the run's peak memory and its time per
iteration, a LoRA student against a fully trained one, each in a process of its own (1-step dmd2 without its GAN,
so that no data are needed, one thread): the real MNIST DDPM through wrap_teacher (0.6M parameters, batch 64), or
with `--big` an untrained UNet2DModel of 3x32x32 images (cost only, batch 4).

    python bench/lora_cost.py --out bench/out/lora [--iters 40] [--ranks 0,4,16] [--big]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import json, sys, torch
sys.path[:0] = [{src!r}, {bench!r}]
torch.set_num_threads(1)
import distmatch
from distmatch.eval.speed import peak_rss_mb
from throughput import mnist_teacher
from pathlib import Path
if {big}:
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                      layers_per_block=2)
    teacher = distmatch.wrap_teacher(net, sample_shape=(3, 32, 32), alphas_cumprod=DDPMScheduler().alphas_cumprod)
else:
    teacher = mnist_teacher(Path({shared!r}))
settings = {{"train.iters": {iters}, "train.batch_size": 4 if {big} else 64, "train.log_every": 10, "train.preview": False,
            "train.ckpt_every": 10 ** 6, "dmd2.gan": False, "student.lora_rank": {rank}}}
distmatch.distill(teacher, {out!r}, settings=settings, progress=False)
log = [json.loads(line) for line in open({out!r} + "/log.jsonl")]
first = next(r for r in log if r["it"] == 10)
from safetensors import safe_open
with safe_open({out!r} + "/checkpoint.safetensors", "pt") as f:
    gen = [f.get_slice(k).get_shape() for k in f.keys() if k.startswith("module/gen/")
           and ({rank} == 0 or ".lora_" in k)]
trainable = sum(int(torch.tensor(s).prod()) for s in gen)
print(json.dumps({{"rank": {rank}, "s_per_it": (log[-1]["time"] - first["time"]) / (log[-1]["it"] - 10),
                  "peak_mb": peak_rss_mb(), "trainable": trainable}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--ranks", default="0,4,16")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    for rank in map(int, args.ranks.split(",")):
        out = args.out / f"rank{rank}"
        code = ONE.format(src=str(ROOT / "src"), bench=str(ROOT / "bench"), shared=str(args.shared),
                          iters=args.iters, rank=rank, out=str(out), big=args.big)
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if ran.returncode != 0:
            sys.exit(ran.stderr[-2000:])
        row = json.loads(ran.stdout.strip().splitlines()[-1])
        print(f"{'big UNet' if args.big else 'MNIST DDPM'}, rank {row['rank']:>2}: generator's trainable parameters {row['trainable']:,}, "
              f"{row['s_per_it']:.3f} s / iteration, peak memory {row['peak_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
