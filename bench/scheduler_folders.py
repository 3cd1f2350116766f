"""Which diffusers model folders distmatch reads: tiny 8x8 UNet2DModel pipelines, one per scheduler or setting, each
distilled for 3 iterations, sampled, exported, its export sampled, and the teacher sampled, through the CLI as a
user would. One line per folder: each step's last line of output (a refusal is one `distmatch: error:` line).

    python bench/scheduler_folders.py --out bench/out/scheduler-folders
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def unet(channels=1, size=8, out=None, classes=None, embedding="positional"):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=out or channels,
                       block_out_channels=(8, 16), layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, num_class_embeds=classes,
                       time_embedding_type=embedding)


def folders() -> dict:
    import diffusers as d

    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    return {
        "ddim scaled-linear": (unet(), d.DDIMScheduler(beta_schedule="scaled_linear", set_alpha_to_one=False,
                                                       steps_offset=1)),
        "ddim zero-snr v": (unet(), d.DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                                    timestep_spacing="trailing")),
        "ddpm cosine sample": (unet(), d.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample")),
        "ddpm sigmoid": (unet(), d.DDPMScheduler(beta_schedule="sigmoid")),
        "ddpm 100 steps": (unet(), d.DDPMScheduler(num_train_timesteps=100)),
        "ddpm thresholding": (unet(), d.DDPMScheduler(thresholding=True, clip_sample=False)),
        "ddpm learned variance": (unet(out=2), d.DDPMScheduler(variance_type="learned_range")),
        "ddpm rgb 8x16": (unet(channels=3, size=(8, 16)), d.DDPMScheduler()),
        "ddpm 3 classes": (unet(classes=3), d.DDPMScheduler()),
        "euler v": (unet(), d.EulerDiscreteScheduler(prediction_type="v_prediction")),
        "euler karras": (unet(), d.EulerDiscreteScheduler(use_karras_sigmas=True)),
        "euler ancestral": (unet(), d.EulerAncestralDiscreteScheduler()),
        "heun": (unet(), d.HeunDiscreteScheduler()),
        "pndm": (unet(), d.PNDMScheduler()),
        "lcm": (unet(), d.LCMScheduler()),
        "unipc": (unet(), d.UniPCMultistepScheduler()),
        "dpm-solver++": (unet(), d.DPMSolverMultistepScheduler()),
        "flow euler shift 3": (unet(), d.FlowMatchEulerDiscreteScheduler(shift=3.0)),
        "flow heun": (unet(), d.FlowMatchHeunDiscreteScheduler()),
        "unipc flow sigmas": (unet(), d.UniPCMultistepScheduler(**flow)),
        "dpm-solver flow sigmas": (unet(), d.DPMSolverMultistepScheduler(**flow)),
        "score sde fourier": (unet(embedding="fourier"), d.ScoreSdeVeScheduler(sigma_max=348.0)),
        "score sde positional": (unet(), d.ScoreSdeVeScheduler(sigma_max=348.0)),
        "edm euler": (unet(), d.EDMEulerScheduler()),
        "edm dpm-solver v": (unet(), d.EDMDPMSolverMultistepScheduler(prediction_type="v_prediction", sigma_data=1.0)),
    }


def last_line(*args: str) -> str:
    cli = Path(sys.executable).with_name("distmatch")
    ran = subprocess.run([str(cli), *args], capture_output=True, text=True)
    lines = [ln.split("\r")[-1].strip() for ln in (ran.stdout + ran.stderr).splitlines() if ln.strip()]
    return ("ok: " if ran.returncode == 0 else "FAILED: ") + (lines[-1] if lines else "")


def main() -> None:
    import diffusers

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/out/scheduler-folders"))
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name, (net, scheduler) in folders().items():
        stem = a.out / name.replace(" ", "-")
        ve = type(scheduler).__name__ == "ScoreSdeVeScheduler"
        pipeline = diffusers.ScoreSdeVePipeline if ve else diffusers.DDPMPipeline
        pipeline(unet=net, scheduler=scheduler).save_pretrained(stem / "teacher")
        steps = [last_line("distill", "--teacher", str(stem / "teacher"), "--method", "dmd2", "--steps", "2", "--out",
                           str(stem / "student"), "--set", "train.iters=3", "dmd2.gan=false", "train.progress=false")]
        if steps[0].startswith("ok"):
            steps += [last_line("sample", "--model", str(stem / "student"), "--n", "4", "--out", str(stem / "s.png")),
                      last_line("export", "--model", str(stem / "student"), "--out", str(stem / "export"))]
            if steps[-1].startswith("ok"):
                steps.append(last_line("sample", "--model", str(stem / "export"), "--n", "4", "--out",
                                       str(stem / "e.png")))
            steps.append(last_line("sample", "--model", str(stem / "teacher"), "--n", "4", "--out",
                                   str(stem / "t.png")))
        print(f"{name} ({type(scheduler).__name__}): " + " | ".join(steps), flush=True)


if __name__ == "__main__":
    main()
