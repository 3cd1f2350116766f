"""MSD (Song et al. 2024, arXiv 2410.23274): multi-student distillation behind a class router.

K students each own a disjoint set of classes (equal contiguous splits, or a balanced k-means of the per-class
data means) and are each distilled on their own classes only, with a critic of their own initialised from the
teacher, in the paper's two stages: DM (DMD2's distribution matching and two time-scale critic, no GAN), then ADM,
which resumes from it and adds DMD2's GAN: a head on the student's critic, trained on real data of the student's
own classes (`msd.gan`, from `msd.adm_start` of the distillation on). At sampling time a ClassRouter sends each
label to its owner, so the NFE stays that of one student.

Cost: one iteration trains ONE student (student `it % K`, a DMD2 iteration: critic every turn, generator every
`critic_ratio`-th turn of that student), so an MSD iteration costs what a DMD2 iteration does and each student gets
train.iters / K iterations: multiply train.iters by K to give every student DMD2's budget.

Smaller students (`small=true`): networks narrower than the teacher's (`student_width`/`student_depth` for MLPs,
`student_channels` for U-Nets), randomly initialised, first fitted by teacher score matching (x̂_0 regression of the
small denoiser onto the teacher's denoiser at noisy data of the student's classes, EDM weighting) for
`prestage_iters` iterations in which every student trains on its own classes' share of each data batch; then
distilled. Their network configs go into the exported router.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..data import load_data
from ..errors import UserError, listed
from ..networks import build_denoiser
from ..schedules import sample_lognormal_sigmas
from ..training.ema import ema_copy, ema_update
from ..training.method import Batch, Method
from ..training.teacher import edm_denoising_loss
from .common import (Critic, DistributionMatching, RealScore, check_dm_range, draw_labels, init_copy,
                     merged_state_dict)
from .dmd2 import generator_gan_term
from .losses import VECTOR_GAN_WEIGHT, dm_loss
from .router import ClassRouter
from .student import refuse_student_options, student_network_config

# Students own few classes each and get train.iters / K iterations: on vectors Adam's beta1 0.9 and the rate 1e-4
# serve them better than the single-student settings.
# The ADM stage's generator GAN weight is DMD2's constant on images and balanced on vectors, as dmd2's.
DEFAULTS = {"vector": {"train": {"betas": [0.9, 0.999], "lr": 1e-4},
                       "msd": dict(VECTOR_GAN_WEIGHT)}}
PARTITIONS = ("contiguous", "kmeans")
DEFAULT_STUDENTS = 4
PRESTAGE_P_MEAN, PRESTAGE_P_STD = -1.2, 1.8  # wide log-normal levels, as for fitting a net to an exact teacher


@dataclass
class Options:
    students: int = 0                  # K students, each owning a partition of the classes (0: min(4, classes))
    partition: str = "contiguous"      # contiguous (equal splits of the class indices) | kmeans (of class means)
    critic_ratio: int = 5              # critic updates per student update (two time-scale rule), per student
    dm_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # DM levels: fractions of the teacher's levels
                                                                         # up to the student's first level
    guidance: float = 1.0              # classifier-free guidance on the real (teacher) score; 1 = none
    lr_critic: float = 0.0             # 0 = train.lr
    small: bool = False                # smaller students than the teacher, pre-trained by teacher score matching
    student_width: int = 0             # small MLP students: hidden width (0: half the teacher's)
    student_depth: int = -1            # small MLP students: residual blocks (-1: the teacher's)
    student_channels: list[int] = field(default_factory=list)  # small U-Net students (empty: half the teacher's)
    prestage_iters: int = 500          # small students: teacher score matching iterations before distillation
    prestage_lr: float = 1e-3          # learning rate of teacher score matching
    gan: bool = True                   # the ADM stage: DMD2's GAN on real data of each student's own classes
    adm_start: float = 0.5             # share of the distillation iterations in the DM stage before ADM begins
                                       # (the paper's stage lengths could not be read; half each)
    gan_weight_g: float = 3e-3         # generator GAN weight (DMD2's code); with gan_balance, a fraction of the DM push
    gan_weight_d: float = 1e-2         # discriminator loss weight inside the critic loss (keep <= 1e-2)
    gan_balance: bool = False          # true: scale the GAN term to gan_weight_g x the DM push (vectors, at 0.5)

    def validate(self):
        if self.students < 0:
            raise UserError(f"msd.students must be >= 1 (or 0: min(4, the classes)), got {self.students}")
        if self.partition not in PARTITIONS:
            raise UserError(f"msd.partition must be {' or '.join(PARTITIONS)}, got {self.partition!r}")
        if self.critic_ratio < 1 or self.prestage_iters < 0 or self.prestage_lr <= 0:
            raise UserError("msd.critic_ratio must be >= 1, msd.prestage_iters >= 0 and msd.prestage_lr > 0")
        check_dm_range("msd", self.dm_range)
        if not self.small and (self.student_width or self.student_depth >= 0 or self.student_channels):
            raise UserError("msd.student_width / student_depth / student_channels shape small students: set "
                            "msd.small=true, or drop them")
        if self.student_width < 0 or any(c < 1 for c in self.student_channels) or self.guidance < 0:
            raise UserError("msd.student_width must be >= 0, msd.student_channels positive, msd.guidance >= 0")
        if self.lr_critic < 0:
            raise UserError(f"msd.lr_critic must be >= 0 (0: train.lr), got {self.lr_critic}")
        if not 0.0 <= self.adm_start < 1.0 or self.gan_weight_g < 0 or self.gan_weight_d < 0:
            raise UserError(f"msd.adm_start must be in [0, 1) and the GAN weights >= 0, got adm_start="
                            f"{self.adm_start}")


# ---------------------------------------------------------------- partitions of the classes

def contiguous_partition(num_classes: int, students: int) -> list[int]:
    """owner[c] for equal contiguous splits of 0..C-1 (sizes differ by at most one)."""
    return [c * students // num_classes for c in range(num_classes)]


def kmeans_partition(points: torch.Tensor, students: int, iters: int = 50, restarts: int = 8,
                     seed: int = 0) -> list[int]:
    """Balanced k-means of per-class points (C, D): clusters get the contiguous split's sizes. Each assignment step
    is an optimal assignment of points to centroid slots (Hungarian), so balance is exact, not greedy."""
    from scipy.optimize import linear_sum_assignment

    points = points.double().flatten(1)
    sizes = torch.bincount(torch.tensor(contiguous_partition(len(points), students)), minlength=students)
    slots = torch.repeat_interleave(torch.arange(students), sizes)
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        centroids = points[torch.randperm(len(points), generator=g)[:students]]
        for _ in range(iters):
            cost = torch.cdist(points, centroids[slots]) ** 2
            assign = slots[torch.as_tensor(linear_sum_assignment(cost.numpy())[1])]
            new = torch.stack([points[assign == j].mean(0) for j in range(students)])
            done = torch.allclose(new, centroids)
            centroids = new
            if done:
                break
        inertia = float(((points - centroids[assign]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, assign)
    first = {}  # number the students by their smallest class, so the result reads in class order
    for c, j in enumerate(best[1].tolist()):
        first.setdefault(j, len(first))
    return [first[j] for j in best[1].tolist()]


def class_means(teacher, data) -> torch.Tensor:
    """Per-class means of the distillation's data (the teacher's own unless given; normalised space), (C, D...)."""
    data = data if data is not None else load_data(teacher.spec.source, spec=teacher.spec)
    if data.labels is None:
        raise UserError(f"msd.partition=kmeans needs labelled data, and '{data.spec.source}' have no labels")
    k = teacher.num_classes
    missing = [c for c in range(k) if not (data.labels == c).any()]
    if missing:
        raise UserError(f"msd.partition=kmeans: classes {listed(missing)} have no samples in '{data.spec.source}'")
    return torch.stack([data.x[data.labels == c].mean(0) for c in range(k)])


def class_owners(teacher, opts: Options, data=None) -> list[int]:
    """Each class's student: opts.students of them (0: four, or one per class when there are fewer)."""
    k = teacher.num_classes
    if not k:
        raise UserError("msd needs a class-conditional teacher (its students each own a set of classes); "
                        "this teacher has no classes")
    students = opts.students or min(DEFAULT_STUDENTS, k)
    if k < students:
        raise UserError(f"msd.students={students} but the teacher has only {k} classes")
    if opts.partition == "kmeans":
        return kmeans_partition(class_means(teacher, data), students)
    return contiguous_partition(k, students)


def own_rows(data, owner: list[int], students: int) -> list[torch.Tensor]:
    """The data rows of each student's classes: the real side of its GAN."""
    if data is None or data.labels is None:
        raise UserError("msd's ADM stage trains each student's GAN on real data of its classes, and these data "
                        "carry no labels: give labelled data (--data), or turn the stage off (msd.gan=false)")
    of = torch.as_tensor(owner)[data.labels.cpu()]
    rows = [(of == i).nonzero().flatten() for i in range(students)]
    if empty := [i for i, r in enumerate(rows) if not len(r)]:
        classes = [c for c, j in enumerate(owner) if j == empty[0]]
        raise UserError(f"msd's ADM stage trains each student's GAN on real data of its classes, and the data hold "
                        f"none of classes {listed(classes)}: give data of every class, or turn the stage off "
                        "(msd.gan=false)")
    return rows


def small_network(net_cfg: dict, opts: Options) -> dict:
    """The network config of a small student: the teacher's, narrower (and optionally shallower)."""
    cfg = copy.deepcopy(net_cfg)
    if cfg["kind"] in ("diffusers", "external"):
        raise UserError("msd.small narrows distmatch's own networks; this teacher's network is of its own class, "
                        "so each student is a copy of it: drop msd.small")
    if cfg["kind"] == "mlp":
        cfg["width"] = opts.student_width or max(8, cfg["width"] // 2)
        cfg["depth"] = cfg["depth"] if opts.student_depth < 0 else opts.student_depth
    else:
        cfg["channels"] = list(opts.student_channels) or [max(8, c // 2) for c in cfg["channels"]]
    return cfg


# ---------------------------------------------------------------- the method

class MSD(DistributionMatching, Method):
    name = "msd"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        # teacher score matching regresses at noisy data; k-means groups the classes by their data's means; the
        # ADM stage's GAN tells real data from the students' samples
        return (cfg.msd.small and cfg.msd.prestage_iters > 0) or cfg.msd.partition == "kmeans" or cfg.msd.gan

    def __init__(self, ctx, teacher, cfg, sigmas: list[float], data=None):
        refuse_student_options(cfg, self.name)
        opts = self.opts = getattr(cfg, self.name)
        self.ctx = ctx
        self.owner = class_owners(teacher, opts, data)
        self.sigma_data = teacher.config.get("sigma_data", 0.5)
        self.num_classes = teacher.num_classes
        self.teacher = teacher.denoiser.to(ctx.device)
        self.real = RealScore(self.teacher, opts.guidance, self.num_classes)
        self.prestage = opts.prestage_iters if opts.small else 0
        if opts.small:
            small_network(teacher.config["network"], opts)  # refuses a network that is not distmatch's own
        if self.prestage >= cfg.train.iters:
            raise UserError(f"msd.small trains its students by teacher score matching for msd.prestage_iters="
                            f"{self.prestage} iterations before distilling them; train.iters={cfg.train.iters} "
                            "leaves none for distillation: raise train.iters or lower msd.prestage_iters")
        self.net_cfgs, self.gens, self.critics, self.emas, self.opt_g, self.opt_c = [], [], [], [], [], []
        self.student_cfg = cfg.student
        self.n_students = max(self.owner) + 1
        for _ in range(self.n_students):
            self.add_student(teacher)
        if self.prestage:
            params = [p for gen in self.gens for p in gen.parameters()]
            self.opt_pre = ctx.make_optimizer(params, lr=opts.prestage_lr)
        self.weights = [self.student_class_weights(teacher.class_weights, i) for i in range(self.n_students)]
        self.adm_from = self.prestage + int(round(opts.adm_start * (cfg.train.iters - self.prestage)))
        self.real_rows = own_rows(data, self.owner, self.n_students) if opts.gan else None
        self.data = data
        self.set_student(teacher.schedule, sigmas, teacher.shape, ctx.device, cfg.student)

    def add_student(self, teacher):
        ctx, opts = self.ctx, self.opts
        if opts.small:  # random init; teacher score matching gives it a start
            net_cfg = student_network_config(small_network(teacher.config["network"], opts), self.student_cfg)
            gen = build_denoiser(net_cfg, teacher.shape, self.num_classes, self.sigma_data).to(ctx.device)
        else:
            net_cfg = student_network_config(teacher.config["network"], self.student_cfg)
            gen = init_copy(teacher.init_net, ctx.device, self.student_cfg.fourier_cap, self.student_cfg.lora_rank)
        self.net_cfgs.append(net_cfg)
        self.gens.append(ctx.prepare(gen))
        # after prepare: a small student's random start is the first process's on every process, and so its EMA
        self.emas.append(ema_copy(ctx.unwrap(self.gens[-1])))
        critic = Critic(init_copy(teacher.init_net, ctx.device), gan=opts.gan, section="msd")
        self.critics.append(ctx.prepare(critic.to(ctx.device)))
        self.opt_g.append(ctx.make_optimizer(self.gens[-1].parameters()))
        self.opt_c.append(ctx.make_optimizer(self.critics[-1].parameters(), lr=opts.lr_critic or None))

    def student_class_weights(self, class_weights: list[float], i: int) -> list[float]:
        base = class_weights or [1.0] * self.num_classes
        return [w if self.owner[c] == i else 0.0 for c, w in enumerate(base)]

    def modules(self):
        out = {}
        for i in range(self.n_students):
            out.update({f"gen{i}": self.gens[i], f"critic{i}": self.critics[i], f"ema{i}": self.emas[i]})
        return out

    def optimizers(self):
        out = {f"gen{i}": o for i, o in enumerate(self.opt_g)}
        out.update({f"critic{i}": o for i, o in enumerate(self.opt_c)})
        if self.prestage:
            out["prestage"] = self.opt_pre
        return out

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        if it < self.prestage:
            return self.prestage_step(batch)
        i, turn = (it - self.prestage) % self.n_students, (it - self.prestage) // self.n_students
        adm = self.opts.gan and it >= self.adm_from
        n = self.ctx.train.batch_size
        real_x, cond = self.own_real(i, n) if adm else (None, draw_labels(self.weights[i], n, self.ctx.device))
        logs = self.critic_step(i, cond, real_x)
        if turn % self.opts.critic_ratio == 0:
            logs.update(self.generator_step(i, cond, adm))
        return logs

    def own_real(self, i: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n real samples of student i's own classes, with their labels (the fake samples are drawn at those)."""
        rows = self.real_rows[i][torch.randint(len(self.real_rows[i]), (n,))]
        return self.data.x[rows].to(self.ctx.device), self.data.labels[rows].to(self.ctx.device)

    def prestage_step(self, batch: Batch) -> dict[str, float]:
        """Teacher score matching: every small student regresses onto the teacher on its classes' share of the batch."""
        owner = torch.as_tensor(self.owner, device=batch.labels.device)[batch.labels]
        sigma = sample_lognormal_sigmas(len(batch.x), PRESTAGE_P_MEAN, PRESTAGE_P_STD, device=self.ctx.device)

        def target(x, s, c):
            with torch.no_grad():
                return self.teacher(x, s, c).float()

        total = 0.0
        with self.ctx.autocast():
            for i, gen in enumerate(self.gens):
                mine = (owner == i).nonzero().flatten()
                # a student absent from this batch still joins the graph (weight 0), so every process reduces alike
                rows, scale = (mine, 1.0) if len(mine) else (mine.new_zeros(1), 0.0)
                x0, s, c = batch.x[rows], sigma[rows], batch.labels[rows]
                total = total + scale * edm_denoising_loss(gen, x0, s, c, self.sigma_data, target)
        self.opt_pre.zero_grad(set_to_none=True)
        self.ctx.backward(total)
        for gen in self.gens:
            self.ctx.clip(gen)
        self.opt_pre.step()
        decay = self.ctx.ema_decay(self.ctx.it)
        for gen, ema in zip(self.gens, self.emas):
            ema_update(ema, self.ctx.unwrap(gen), decay)
        return {"loss_tsm": total.item() / len(self.gens)}

    def critic_step(self, i: int, cond, real_x=None) -> dict[str, float]:
        return self.fit_critic(self.gens[i], self.critics[i], self.opt_c[i], len(cond), cond, real_x,
                               self.opts.gan_weight_d)

    def generator_step(self, i: int, cond, adm: bool = False) -> dict[str, float]:
        n, gen = len(cond), self.gens[i]
        steps = self.student.pick_step(self.ctx.shared_generator, n)
        critic = self.freeze(self.critics[i])
        with self.ctx.autocast():
            x = self.student.sample(gen, cond, steps, grad=True).float()
        _, sigma = self.levels(n, *self.opts.dm_range)
        g = self.dm_grad(critic, x, sigma, cond, steps)
        loss = loss_dm = dm_loss(x, g)
        logs = {"loss_dm": loss_dm.item(), "dm_grad": g.abs().mean().item()}
        if adm:  # DMD2's generator GAN term, on the student's own critic's head
            term, gan_logs = generator_gan_term(self, critic, x, cond, steps, loss_dm)
            logs.update(gan_logs)
            loss = loss + term
        # EMA warm-up counted in student turns of the whole ensemble (each student's own count is about 1/K of it)
        self.end_student_turn(gen, self.opt_g[i], self.emas[i], critic, self.opt_c[i], loss)
        return logs

    def export(self):
        weights = {f"students.{i}.{k}": v for i, ema in enumerate(self.emas) for k, v in merged_state_dict(ema).items()}
        return weights, {"router": {"networks": self.net_cfgs, "owner": list(self.owner)}}

    def sampler(self):
        return ClassRouter(self.emas, self.owner).to(self.ctx.device)


Method = MSD
