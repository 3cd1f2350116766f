"""DMD: the teacher's noise->sample pairs (made once, cached, reused on resume), the refused LPIPS distance,
a short run on the exact mixture, and resuming."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distmatch import checkpoint as ckpt
from distmatch.cli import main
from distmatch.methods import pairs, run_distill
from distmatch.errors import UserError
from distmatch.models import load_model
from distmatch.samplers import ode_trajectory
from distmatch.teachers.train import train_teacher

QUIET = ["train.progress=false"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher("8gaussians", out, overrides=QUIET + ["network.width=32", "network.depth=1",
                                                                "network.fourier=8", "train.iters=30"])


def weights(run):
    return load_file(str(Path(run) / ckpt.MODEL))


def test_pairs_stopped_part_way_keep_the_chunks_made(tiny_teacher, tmp_path, monkeypatch):
    """A run stopped while it makes its pairs (a launcher kills its processes 30 s after a Ctrl-C) keeps each
    finished chunk; the re-run makes only the others, and ends with the pairs an unstopped run makes."""
    args = QUIET + ["train.batch_size=32", "train.iters=2", "dmd.pairs=2500"]  # three chunks of 1024
    solve, calls = pairs.ode_trajectory, []

    def stopped_at_the_third(*a, **k):
        calls.append(len(a[1]))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return solve(*a, **k)

    monkeypatch.setattr(pairs, "ode_trajectory", stopped_at_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        run_distill(tiny_teacher, tmp_path / "s", method="dmd", steps=2, overrides=args)
    part = tmp_path / "s" / pairs.PARTS_DIR
    assert sorted(p.name for p in part.iterdir()) == ["0.safetensors", "1024.safetensors"]
    assert sorted(ckpt.load_tensors(part / "1024.safetensors")[0]) == ["sample", "states"]
    calls.clear()
    monkeypatch.setattr(pairs, "ode_trajectory", lambda *a, **k: calls.append(len(a[1])) or solve(*a, **k))
    run_distill(tiny_teacher, tmp_path / "s", method="dmd", steps=2, overrides=args)
    assert calls == [452] and not part.exists()
    run_distill(tiny_teacher, tmp_path / "full", method="dmd", steps=2, overrides=args)
    resumed, full = (ckpt.load_tensors(tmp_path / r / pairs.PAIRS_FILE)[0] for r in ("s", "full"))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)


def test_pairs_are_made_once_and_reused_on_resume(tiny_teacher, tmp_path, monkeypatch):
    """The resumed run reads the cached pairs (making them again would raise) and ends where an uninterrupted run
    ends; the pairs are the teacher's own ODE samples from the stored noises."""
    args = QUIET + ["train.batch_size=32", "train.ckpt_every=7", "dmd.critic_ratio=2", "dmd.pairs=256"]
    run_distill(tiny_teacher, tmp_path / "full", method="dmd", steps=2, overrides=args + ["train.iters=20"])
    run_distill(tiny_teacher, tmp_path / "half", method="dmd", steps=2, overrides=args + ["train.iters=10"])
    cache = tmp_path / "half" / pairs.PAIRS_FILE
    before, meta = ckpt.load_tensors(cache)
    assert before["noise"].shape == before["sample"].shape == (256, 2) and meta["pairs"] == 256

    def no_regeneration(*a, **k):
        raise AssertionError("the pairs were made again")

    with monkeypatch.context() as m:
        m.setattr(pairs, "make_pairs", no_regeneration)
        run_distill(tiny_teacher, tmp_path / "half", method="dmd", steps=2, overrides=args + ["train.iters=20"])
    after, _ = ckpt.load_tensors(cache)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    full, half = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert full.keys() == half.keys() and all(torch.equal(full[k], half[k]) for k in full)
    full_pairs, _ = ckpt.load_tensors(tmp_path / "full" / pairs.PAIRS_FILE)
    assert all(torch.equal(before[k], full_pairs[k]) for k in before)  # same seed, same pairs
    teacher = load_model(tiny_teacher)
    y, states = ode_trajectory(teacher.denoiser, before["noise"][:16], teacher.default_steps,
                               teacher.config["solver"], levels=meta["levels"])
    assert torch.allclose(y.float(), before["sample"][:16], atol=1e-5)
    # a 2-step student: the pairs also hold the ODE's state at its second level, where step 1 is regressed from
    assert len(meta["levels"]) == 1 and before["states"].shape == (256, 1, 2)
    assert torch.allclose(states[0].float(), before["states"][:16, 0], atol=1e-5)


def test_pairs_made_by_another_teacher_or_damaged_are_not_reused(tiny_teacher, tmp_path):
    cache = tmp_path / "s" / pairs.PAIRS_FILE
    ckpt.save_tensors(cache, {"noise": torch.zeros(8, 2), "sample": torch.zeros(8, 2)}, {"pairs": 8})
    args = QUIET + ["train.batch_size=16", "dmd.pairs=8"]
    run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=args + ["train.iters=2"])
    tensors, meta = ckpt.load_tensors(cache)
    assert meta["teacher"] and not torch.equal(tensors["noise"], torch.zeros(8, 2))
    made = tensors["noise"].clone()
    cache.write_bytes(cache.read_bytes()[:100])  # a damaged cache is made again, not a stop
    run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=args + ["train.iters=4"])
    assert torch.equal(ckpt.load_tensors(cache)[0]["noise"], made)
    tensors, meta = ckpt.load_tensors(cache)  # cut short, or with a NaN, under the right settings: made again too
    ckpt.save_tensors(cache, {k: v[:5] for k, v in tensors.items()}, meta)
    run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=args + ["train.iters=6"])
    tensors, meta = ckpt.load_tensors(cache)
    assert torch.equal(tensors["noise"], made)
    tensors["sample"][0, 0] = float("nan")
    ckpt.save_tensors(cache, tensors, meta)
    run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=args + ["train.iters=8"])
    assert torch.isfinite(ckpt.load_tensors(cache)[0]["sample"]).all()


def test_pairs_of_a_conditional_teacher_carry_labels_with_the_class_weights():
    def denoiser(x, sigma, cond):  # a stand-in teacher that denoises to its class index
        return cond[:, None].float().expand_as(x)

    made = pairs.make_pairs(denoiser, 4000, (3,), steps=4, solver="heun", sigma_max=80.0, class_weights=[0.8, 0.2],
                            seed=3, device="cpu", chunk=1000)
    share = made["labels"].float().mean().item()
    assert abs(share - 0.2) < 0.03, share
    assert torch.allclose(made["sample"], made["labels"][:, None].float().expand(-1, 3), atol=1e-4)
    again = pairs.make_pairs(denoiser, 4000, (3,), 4, "heun", 80.0, [0.8, 0.2], seed=3, device="cpu")
    assert all(torch.equal(made[k], again[k]) for k in made)  # every process makes the same pairs


def test_lpips_is_refused_in_one_line(tiny_teacher, tmp_path, capsys):
    with pytest.raises(UserError, match="LPIPS"):
        run_distill(tiny_teacher, tmp_path / "s", method="dmd", overrides=QUIET + ["dmd.regression=lpips"])
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "c"), "--method", "dmd",
              "--set", "dmd.regression=lpips"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "lpips" in err[0] and "mse" in err[0], err
    assert not (tmp_path / "c").exists()


