"""MSD: class partitions, routing through the saved model, a short run on a labelled exact mixture, resuming,
and small students pre-trained by teacher score matching."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distmatch import checkpoint as ckpt
from distmatch.data import load_data
from distmatch.methods import run_distill
from distmatch.methods.msd import contiguous_partition, kmeans_partition
from distmatch.errors import UserError
from distmatch.eval.vectors import mode_stats, sliced_wasserstein
from distmatch.models import load_model
from distmatch.networks import build_denoiser
from distmatch.teachers.train import train_teacher

QUIET = ["train.progress=false"]
TINY = ["network.width=32", "network.depth=1", "network.fourier=8", "train.iters=30", "train.batch_size=128"]


def assert_partition(owner, classes, students):
    assert len(owner) == classes  # every class has exactly one owner
    assert sorted(set(owner)) == list(range(students))  # every student owns something
    sizes = torch.bincount(torch.tensor(owner), minlength=students)
    assert sizes.max() - sizes.min() <= 1, sizes  # balanced


@pytest.mark.parametrize("classes,students", [(8, 4), (10, 3), (25, 4), (5, 5), (7, 1)])
def test_partitions_give_each_class_one_owner(classes, students):
    owner = contiguous_partition(classes, students)
    assert_partition(owner, classes, students)
    assert owner == sorted(owner)  # contiguous blocks
    points = torch.randn(classes, 6, generator=torch.Generator().manual_seed(classes))
    assert_partition(kmeans_partition(points, students), classes, students)


def test_kmeans_finds_clusters_and_balances_uneven_ones():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(12) % 3
    points = centres[truth] + 0.1 * torch.randn(12, 2, generator=g)
    owner = torch.tensor(kmeans_partition(points, 3))
    for c in range(3):  # same grouping as the true clusters, up to the students' numbering
        assert len(owner[truth == c].unique()) == 1
    uneven = torch.cat([torch.randn(6, 2, generator=g) * 0.1, 10 + torch.randn(2, 2, generator=g) * 0.1])
    assert_partition(kmeans_partition(uneven, 2), 8, 2)  # 6 + 2 natural clusters -> 4 + 4 students


@pytest.fixture(scope="module")
def labelled_teacher(tmp_path_factory):
    """The exact 8-Gaussian mixture with class = component, and its fitted class-conditional network."""
    out = tmp_path_factory.mktemp("teacher")
    net = ["network.width=96", "network.depth=2", "network.fourier=32", "train.iters=600", "train.batch_size=512"]
    return train_teacher("8gaussians-labeled", out, overrides=net + QUIET)


@pytest.fixture(scope="module")
def msd_run(labelled_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("msd") / "s"
    return run_distill(labelled_teacher, out, method="msd", overrides=QUIET + [
        "msd.students=2", "train.iters=3000", "train.batch_size=128", "train.lr=3e-4"])


def per_class(model, ref, steps=None):
    """Mean over classes of: share of samples on the requested class's mode, SWD to that class's data, std."""
    acc, swd, std = [], [], []
    for c in range(model.num_classes):
        x, _ = model.sample(500, steps=steps, cond=c, seed=c)
        acc.append(mode_stats(x, ref.mixture)["mode_histogram"][c])
        swd.append(sliced_wasserstein(x, ref.x[ref.labels == c]))
        std.append(x.std(0).mean().item())
    return sum(acc) / len(acc), sum(swd) / len(swd), sum(std) / len(std)


def test_short_msd_run_samples_each_class_on_its_mode(labelled_teacher, msd_run):
    """The teacher's 1-step output is each class's mean (no spread); the students sample each class's Gaussian."""
    teacher, student = load_model(labelled_teacher), load_model(msd_run)
    ref = load_data("8gaussians-labeled", split="test", spec=teacher.spec)
    acc, swd, std = per_class(student, ref)
    _, swd_one, std_one = per_class(teacher, ref, steps=1)
    true_std = ref.x[ref.labels == 0].std(0).mean().item()
    assert acc > 0.9, acc
    assert swd < 0.5 * swd_one, (swd, swd_one)
    assert std_one < 0.1 * true_std and 0.7 * true_std < std < 1.5 * true_std, (std_one, std, true_std)
    xs, _ = student.sample(3000, seed=1)
    assert mode_stats(xs, ref.mixture)["modes_covered"] == 1.0


def test_saved_model_routes_each_class_to_its_owner_only(msd_run):
    model = load_model(msd_run)
    owner = model.config["router"]["owner"]
    assert owner == [0, 0, 0, 0, 1, 1, 1, 1]
    calls = []
    for i, net in enumerate(model.denoiser.students):
        net.register_forward_hook(lambda mod, args, out, i=i: calls.append((i, len(args[0]))))
    for c in range(8):
        calls.clear()
        model.sample(16, cond=c)
        assert calls == [(owner[c], 16)], (c, calls)
    calls.clear()
    model.sample(64, seed=3)  # mixed labels: each student sees exactly its classes' rows, once
    assert sorted(i for i, _ in calls) == [0, 1] and sum(n for _, n in calls) == 64


def test_msd_resumed_run_equals_uninterrupted(tmp_path, stop_before):
    """Small students stopped (as by Ctrl-C) inside the pre-stage and resumed across both stage boundaries (teacher
    score matching -> DM at 8, DM -> ADM at 14): every module, optimizer and draw survives."""
    from distmatch.training.trainer import Interrupted

    teacher = train_teacher("8gaussians-labeled", tmp_path / "t", overrides=TINY + QUIET)
    args = QUIET + ["train.batch_size=32", "train.ckpt_every=7", "msd.students=2", "msd.small=true",
                    "msd.prestage_iters=8", "msd.critic_ratio=2", "msd.partition=kmeans", "train.iters=20",
                    "train.log_every=5"]
    run_distill(teacher, tmp_path / "full", method="msd", overrides=args)
    stop_before(6)
    with pytest.raises(Interrupted):
        run_distill(teacher, tmp_path / "half", method="msd", overrides=args)
    stop_before(None)
    run_distill(teacher, tmp_path / "half", method="msd", overrides=args)
    a, b = (load_file(str(Path(tmp_path / r) / ckpt.MODEL)) for r in ("full", "half"))
    assert a.keys() == b.keys() and any(k.startswith("students.1.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert "loss_gan_d" not in logs[0] and "loss_gan_d" in logs[-1]  # the ADM stage ran after the resume


def test_small_students_are_smaller_and_pretrained_on_the_teacher(labelled_teacher, tmp_path):
    args = QUIET + ["msd.students=2", "msd.small=true", "msd.prestage_iters=400", "train.batch_size=256",
                    "train.log_every=10"]
    out = run_distill(labelled_teacher, tmp_path / "s", method="msd", overrides=args + ["train.iters=401"])
    teacher, model = load_model(labelled_teacher), load_model(out)
    teacher_params = sum(p.numel() for p in teacher.init_net.parameters())
    owner, nets = model.config["router"]["owner"], model.config["router"]["networks"]
    ref = load_data("8gaussians-labeled", split="test", spec=teacher.spec)
    torch.manual_seed(0)
    for i, student in enumerate(model.denoiser.students):
        assert sum(p.numel() for p in student.parameters()) < 0.5 * teacher_params
        fresh = build_denoiser(nets[i], teacher.spec.shape, 8, 0.5)
        mine = torch.tensor([owner[c] == i for c in ref.labels.tolist()])
        x0, cond = ref.x[mine][:1000], ref.labels[mine][:1000]
        sigma = torch.exp(torch.linspace(-3, 1, len(x0)))  # σ from 0.05 to 2.7
        x = x0 + sigma[:, None] * torch.randn_like(x0)
        with torch.no_grad():
            goal = teacher.denoiser(x, sigma, cond)
            err, err_fresh = ((net(x, sigma, cond) - goal).square().mean().item() for net in (student, fresh))
        assert err < 0.1 * err_fresh, (i, err, err_fresh)
    # then distillation continues from the pre-trained students (resuming the same run for more iterations)
    run_distill(labelled_teacher, tmp_path / "s", method="msd", overrides=args + ["train.iters=450"])
    logs = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert all("loss_tsm" in r and "loss_dm" not in r for r in logs if r["it"] <= 400)
    assert all("loss_dm" in r and "loss_tsm" not in r for r in logs if r["it"] > 400)


def test_msd_refuses_unconditional_teachers_and_too_many_students(labelled_teacher, tmp_path):
    plain = train_teacher("8gaussians", tmp_path / "t", overrides=TINY + QUIET)
    with pytest.raises(UserError, match="class-conditional teacher"):
        run_distill(plain, tmp_path / "a", method="msd", overrides=QUIET)
    with pytest.raises(UserError, match="only 8 classes"):
        run_distill(labelled_teacher, tmp_path / "b", method="msd", overrides=QUIET + ["msd.students=9"])


def test_msd_default_gives_four_students_or_one_per_class_when_fewer():
    from types import SimpleNamespace

    from distmatch.methods.msd import Options, class_owners

    assert class_owners(SimpleNamespace(num_classes=3), Options()) == [0, 1, 2]
    assert class_owners(SimpleNamespace(num_classes=10), Options()) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert class_owners(SimpleNamespace(num_classes=10), Options(students=2)) == [0] * 5 + [1] * 5


def test_router_refuses_labels_no_student_owns(tmp_path):
    """The teacher's null label serves guidance during training; a trained multi-student model refuses it."""
    teacher = train_teacher("8gaussians-labeled", tmp_path / "t", overrides=TINY + QUIET)
    out = run_distill(teacher, tmp_path / "s", method="msd", overrides=QUIET + [
        "msd.students=2", "msd.guidance=2.0", "msd.critic_ratio=1", "train.iters=4", "train.batch_size=32"])
    model = load_model(out)
    x, _ = model.sample(4, cond=7)
    assert torch.isfinite(x).all()
    with pytest.raises(UserError, match=r"no student for label 8 \(the null label of classifier-free guidance\); "
                                        r"give a class label in 0\.\.7"):
        model.sample(4, cond=8)
    with pytest.raises(UserError, match="no student for label -1; give a class label in 0..7"):
        model.sample(4, cond=torch.tensor([0, -1, 3, 5]))


def test_small_students_need_iterations_left_for_distillation(labelled_teacher, tmp_path):
    """msd.small spends its first msd.prestage_iters on teacher score matching: a run no longer than that would
    end with students never distilled, so it is refused in one line."""
    with pytest.raises(UserError, match="leaves none for distillation"):
        run_distill(labelled_teacher, tmp_path / "s", method="msd",
                    overrides=QUIET + ["msd.small=true", "msd.prestage_iters=500", "train.iters=20"])


def test_small_students_settings_need_msd_small():
    from distmatch.methods.msd import Options

    for shape in ({"student_width": 8}, {"student_channels": [8]}, {"student_depth": 1}):
        with pytest.raises(UserError, match="shape small students: set msd.small=true"):
            Options(**shape).validate()
    Options(small=True, student_width=8).validate()


def test_adm_stage_takes_each_students_real_data_from_its_own_classes():
    """The GAN of student i sees real rows of i's classes only; a student whose classes have no data is refused."""
    from types import SimpleNamespace

    from distmatch.methods.msd import own_rows

    labels = torch.tensor([0, 3, 1, 2, 3, 0, 2])
    rows = own_rows(SimpleNamespace(labels=labels), owner=[0, 0, 1, 1], students=2)
    assert [r.tolist() for r in rows] == [[0, 2, 5], [1, 3, 4, 6]]
    with pytest.raises(UserError, match=r"none of classes 2, 3:.*msd.gan=false"):
        own_rows(SimpleNamespace(labels=torch.tensor([0, 1, 1])), owner=[0, 0, 1, 1], students=2)
    with pytest.raises(UserError, match="no labels"):
        own_rows(SimpleNamespace(labels=None), owner=[0, 1], students=2)
