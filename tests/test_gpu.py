"""What only a GPU shows: a tensor made on the CPU meeting one on the device. Skipped without CUDA (the suite's
machines have none); a lent GPU runs them with `pytest tests/test_gpu.py`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_unet(num_class_embeds=None):
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                 layers_per_block=1, norm_num_groups=4, num_class_embeds=num_class_embeds)


@pytest.mark.parametrize("where", ["network", "table"])
def test_a_network_wrapped_on_the_gpu_or_beside_a_gpu_table_samples(where):
    """wrap_teacher of a network already on the GPU (its alphas_cumprod a CPU table), or of a CPU network with a
    GPU table: the adapter's σ tables go where the network is."""
    import diffusers

    import distmatch

    net, table = tiny_unet(), diffusers.DDPMScheduler().alphas_cumprod
    net, table = (net.cuda(), table) if where == "network" else (net, table.cuda())
    for timesteps in ("continuous", "discrete"):
        teacher = distmatch.wrap_teacher(net, sample_shape=(1, 8, 8), alphas_cumprod=table, timesteps=timesteps)
        assert np.isfinite(teacher.sample(2, steps=2)).all()


def test_fitting_the_feature_network_leaves_the_gpus_random_numbers_alone():
    """train.eval_every fits the in-domain network with its own seed: the GPU's generator (the training noise)
    is as it was, as the CPU's is."""
    from distmatch.eval.features import train_feature_net

    torch.cuda.manual_seed(123)
    before = torch.cuda.get_rng_state()
    train_feature_net(torch.rand(32, 1, 8, 8) * 2 - 1, None, seed=0, hparams={"steps": 2})
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_an_exported_class_conditional_pipeline_takes_a_gpu_generator(tmp_path):
    """Labels not given are drawn with the caller's generator on its own device."""
    from diffusers import DDPMScheduler, DiffusionPipeline

    from distmatch.methods import run_distill
    from distmatch.to_diffusers import export_student

    tiny_unet(3).save_pretrained(tmp_path / "t" / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "t" / "scheduler")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 3)
    student = run_distill(tmp_path / "t", tmp_path / "s", steps=1, data_source=str(tmp_path / "d.npz"),
                          overrides=["train.progress=false", "train.iters=2", "train.batch_size=4"])
    pipe = DiffusionPipeline.from_pretrained(export_student(student, tmp_path / "e"), trust_remote_code=True)
    pipe.to("cuda")
    images = pipe(batch_size=2, generator=torch.Generator("cuda").manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_the_demo_runs_on_the_gpu(tmp_path):
    """The main job, short: its runs train on the GPU and its report's rows sample there."""
    import json

    from distmatch.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--data", "8gaussians", "--out", str(out), "--set", "teacher.train.iters=60",
            "--set", "teacher.network.width=32", "--set", "teacher.network.depth=1",
            "--set", "teacher.train.progress=false", "--set", "distill.train.iters=40",
            "--set", "distill.train.batch_size=64", "--set", "distill.train.progress=false"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert rows and all(np.isfinite(r["swd"]) for r in rows)
