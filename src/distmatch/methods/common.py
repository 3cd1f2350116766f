"""Pieces every distribution-matching method shares: the teacher's (real) score with guidance, the critic
(fake score + optional GAN head) and the critic and generator updates around a few-step student (student.py).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError
from ..networks.heads import build_head
from ..training.ema import ema_copy, ema_update
from ..training.method import Method
from .losses import critic_loss, dm_gradient, gan_discriminator_loss
from .student import FewStepStudent, StudentConfig, noised


class RealScore(nn.Module):
    """The teacher's denoiser, with classifier-free guidance x̂_u + s (x̂_c - x̂_u) when s != 1 (real score only)."""

    def __init__(self, teacher: nn.Module, guidance: float = 1.0, num_classes: int = 0):
        super().__init__()
        self.teacher, self.guidance, self.num_classes = teacher, guidance, num_classes

    @torch.no_grad()
    def forward(self, x, sigma, cond=None):
        if cond is None or self.guidance == 1.0 or self.num_classes == 0:
            return self.teacher(x, sigma, cond).float()
        null = torch.full_like(cond, self.num_classes)
        both = self.teacher(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])).float()
        cond_x0, uncond_x0 = both.chunk(2)
        return uncond_x0 + self.guidance * (cond_x0 - uncond_x0)


class Critic(nn.Module):
    """The fake score: a denoiser trained on student samples; optionally a GAN head on its features."""

    def __init__(self, denoiser: nn.Module, gan: bool, section: str = "dmd2"):
        super().__init__()
        self.denoiser = denoiser
        source = getattr(denoiser, "backbone", denoiser)  # distmatch's networks, or an adapter of a user's
        if gan and not getattr(source, "feature_dim", 0):
            raise UserError("the GAN head needs the critic's features, and this teacher's network names none: wrap "
                            "it with wrap_teacher(..., features='<bottleneck sub-module>') or turn the GAN off "
                            f"(--set {section}.gan=false)")
        self.head = build_head(source) if gan else None

    def forward(self, x, sigma, cond=None, step=None):
        if self.head is None:
            return self.denoiser(x, sigma, cond), None
        x0, feats = self.denoiser(x, sigma, cond, return_features=True)
        return x0, self.head(feats.float())


class StepCritics(nn.Module):
    """One critic per step of a K-step student: the samples of step k are scored by the fake score of step k's
    own outputs. With one critic for all steps, the DM gradient of every step corrects the *mixture* of the steps'
    outputs, so a step that is already right is pushed to make up for another that is not."""

    def __init__(self, critics: list[Critic]):
        super().__init__()
        self.critics = nn.ModuleList(critics)

    @property
    def head(self):
        return self.critics[0].head

    def forward(self, x, sigma, cond=None, step=None):
        x0, logits = torch.empty_like(x), None
        for k, critic in enumerate(self.critics):  # every critic runs (on its rows, maybe none): DDP sees them all
            rows = (step == k).nonzero().squeeze(1)
            out, lg = critic(x[rows], sigma[rows], cond[rows] if cond is not None else None)
            x0 = x0.index_put((rows,), out.to(x0.dtype))
            if lg is not None:
                logits = (torch.empty((len(x),) + lg.shape[1:], device=x.device, dtype=lg.dtype)
                          if logits is None else logits).index_put((rows,), lg)
        return x0, logits


def draw_labels(class_weights: list[float], n: int, device) -> torch.Tensor:
    """Class labels drawn with the data's class frequencies (for steps that see no data batch)."""
    w = torch.tensor(class_weights, dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True).to(device)


def init_copy(net: nn.Module, device, fourier_cap: float = 0.0, lora_rank: int = 0) -> nn.Module:
    """A trainable copy of the teacher's network (students and critics start from the teacher); `fourier_cap` > 0
    (a generator's copy) limits the Fourier features its pure-noise inputs see (networks.mlp.FourierFeatures);
    `lora_rank` > 0 trains only a LoRA of that rank on its linear and conv layers (with_lora)."""
    out = copy.deepcopy(net).to(device)
    fourier = getattr(getattr(out, "backbone", None), "fourier", None)
    if fourier_cap > 0 and fourier is not None:
        fourier.set_noise_cap(fourier_cap)
    if lora_rank:
        with_lora(out, lora_rank)
    make_trainable(out)
    out.train()
    for m in out.modules():  # diffusers' LabelEmbedding (DiT) drops labels in training mode, for guidance
        if hasattr(m, "token_drop") and getattr(m, "dropout_prob", 0) > 0:
            m.dropout_prob = 0.0  # a student or critic is asked for the class it is given, every time
    return out


def with_lora(net: nn.Module, rank: int) -> None:
    """A LoRA of `rank` (peft, B = 0 at the start: the network unchanged) on every linear and conv layer of `net`,
    whose own weights are then held fixed (make_trainable keeps them so)."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = [name for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise UserError("student.lora_rank: the teacher's network has no linear or conv layer to adapt")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=layers), net)
    net.fixed = tuple(name for name, _ in net.named_parameters() if ".lora_" not in name)


def merged_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """`net`'s weights with any LoRA merged into the layers it adapts, under the plain network's names: a LoRA
    student is saved, loaded and exported as the network it is."""
    if not any(".lora_" in name for name, _ in net.named_parameters()):
        return net.state_dict()  # no LoRA: and no peft import, which costs every run seconds
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(net)
    for m in merged.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    return {k.replace(".base_layer.", "."): v for k, v in merged.state_dict().items() if ".lora_" not in k}


def make_trainable(module: nn.Module) -> None:
    """requires_grad on every parameter but those the user's network holds fixed (TeacherAdapter.fixed)."""
    module.requires_grad_(True)
    for m in module.modules():
        for name in getattr(m, "fixed", ()):
            m.get_parameter(name).requires_grad_(False)


def check_dm_range(section: str, dm_range: list[float]) -> None:
    """The DM gradient's time range: two fractions of the noise grid, 0 <= lo < hi <= 1."""
    lo, hi = dm_range if len(dm_range) == 2 else (None, None)
    if lo is None or not 0 <= lo < hi <= 1:
        raise UserError(f"{section}.dm_range must be two fractions 0 <= lo < hi <= 1, got {dm_range}")


class DistributionMatching:
    """The critic update and the generator's distribution-matching update, on the networks, optimizers and EMA
    they are given: one implementation for a single student (StudentCriticMethod) and for several (msd).
    The host provides ctx, opts, real (RealScore) and sigma_data, and calls set_student (student and grid)."""

    def set_student(self, schedule, sigmas, shape, device, student: StudentConfig) -> None:
        """The K-step student on `sigmas`, and the DM, critic and GAN levels: the teacher's, up to its start."""
        self.student = FewStepStudent(list(sigmas), shape, device, student.backsim == "spread",
                                      schedule.input_scale(sigmas[0]))
        self.grid = schedule.levels_up_to(student.levels_sigma_max or sigmas[0]).float()

    def levels(self, n: int, lo: float = 0.0, hi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid indices uniform in [lo, hi] and their σ: fractions of the N levels of `grid`, the teacher's up to the
        student's start (20..980 of DMD2's 1000; 999 below a flow model's top, 4000 for a 4000-step DDPM)."""
        N = len(self.grid)
        idx = torch.randint(int(round(lo * N)), min(int(round(hi * N)), N - 1) + 1, (n,))
        return idx.to(self.ctx.device), self.grid[idx].to(self.ctx.device)

    def fit_critic(self, gen, critic, opt_c, n: int, cond, real_x=None, gan_weight_d: float = 0.0
                   ) -> dict[str, float]:
        """One update of `critic`: the fake score on noisy (detached) samples of `gen` over the whole grid; with a
        GAN head, also the discriminator on noisy real (`real_x`) vs noisy student samples, in the same pass (DMD2)."""
        steps = self.student.pick_step(self.ctx.shared_generator, n)
        fake = self.critic_samples(gen, cond, steps)
        _, sigma = self.levels(n)
        logs = {}
        with self.ctx.autocast():
            if self.ctx.unwrap(critic).head is not None and real_x is not None:
                _, sigma_r = self.levels(n)
                both = torch.cat([noised(fake, sigma), noised(real_x, sigma_r)])
                cond2 = torch.cat([cond, cond]) if cond is not None else None
                x0, logits = critic(both, torch.cat([sigma, sigma_r]), cond2, torch.cat([steps, steps]))
                loss_fake = critic_loss(x0[:n], fake, sigma, self.sigma_data)
                loss_d = gan_discriminator_loss(logits[:n], logits[n:])
                loss = loss_fake + gan_weight_d * loss_d
                logs["loss_gan_d"] = loss_d.item()
            else:  # a head not yet trained (msd's DM stage) stays in the graph at weight 0: DDP reduces it alike
                x0, logits = critic(noised(fake, sigma), sigma, cond, steps)
                loss = loss_fake = critic_loss(x0, fake, sigma, self.sigma_data)
                loss = loss if logits is None else loss + 0.0 * logits.float().sum()
        self.optimizer_step(critic, opt_c, loss)
        logs["loss_critic"] = loss_fake.item()
        if hasattr(self, "fit_discriminator") and real_x is not None:  # a discriminator of its own (fdistill)
            logs.update(self.fit_discriminator(fake, real_x, cond))
        return logs

    def critic_samples(self, gen, cond, steps) -> torch.Tensor:
        """The student's samples the critic learns from, detached: the critic's loss must not reach the student."""
        with torch.no_grad(), self.ctx.autocast():
            return self.student.sample(gen, cond, steps, grad=False).float()

    @torch.no_grad()
    def dm_grad(self, critic, x: torch.Tensor, sigma: torch.Tensor, cond, steps=None) -> torch.Tensor:
        """The distribution-matching gradient on the student's samples x at noise levels sigma. With len(sigma) a
        multiple d of len(x), each sample is noised d times (the i-th draw at sigma[i*n:(i+1)*n]) and its d
        gradients averaged: less noise in the student's update for d-1 more forward passes of teacher and critic,
        no more backward passes."""
        n = len(x)
        d = len(sigma) // n
        x = x.detach()
        if d > 1:
            x = x.repeat((d,) + (1,) * (x.ndim - 1))
            cond = cond.repeat(d) if cond is not None else None
            steps = steps.repeat(d) if steps is not None else None
        with self.ctx.autocast():
            x_t = noised(x, sigma)
            g = dm_gradient(x, self.real(x_t, sigma, cond), critic(x_t, sigma, cond, steps)[0],
                            normaliser=getattr(self.opts, "normaliser", "sample"))
        return g.view((d, n) + g.shape[1:]).mean(0) if d > 1 else g

    def optimizer_step(self, module: nn.Module, opt, loss: torch.Tensor, clip: bool = True) -> None:
        """One step of `opt` on `loss`, with `module`'s gradients clipped (unless `clip` is false)."""
        opt.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        if clip:
            self.ctx.clip(module)
        opt.step()

    def freeze(self, critic: nn.Module) -> nn.Module:
        """The critic for the student's turn: unwrapped and frozen, so gradients flow to the samples only."""
        critic = self.ctx.unwrap(critic)
        critic.requires_grad_(False)
        return critic

    def train_generator(self, gen, opt_g, ema, loss: torch.Tensor, ema_updates: int) -> None:
        """One optimizer step of `gen` on `loss`, then its EMA (after `ema_updates` earlier updates)."""
        self.optimizer_step(gen, opt_g, loss)
        ema_update(ema, self.ctx.unwrap(gen), self.ctx.ema_decay(ema_updates))

    def end_student_turn(self, gen, opt_g, ema, critic: nn.Module, opt_c, loss: torch.Tensor) -> None:
        """The generator's update on `loss` (EMA warm-up counted in student turns), then its frozen critic
        trainable again."""
        self.train_generator(gen, opt_g, ema, loss, self.ctx.it // getattr(self.opts, "critic_ratio", 1))
        opt_c.zero_grad(set_to_none=True)  # the GAN term left gradients on the frozen critic's graph
        make_trainable(critic)


class StudentCriticMethod(DistributionMatching, Method):
    """The state and updates shared by the single-student methods (dmd2, dmd, fdistill, tdm): the teacher's real
    score, a generator started from the teacher with its EMA, a critic (optionally with a GAN head), their
    optimizers, the student's noise levels, and the two time-scale step over the updates of DistributionMatching.
    Not a method on its own."""

    def setup(self, ctx, teacher, sigmas, guidance: float, gan: bool, lr_critic: float,
              student: StudentConfig | None = None) -> None:
        """`student`: how a K-step student's steps are trained (backsim, critic_per_step, first_only); None for
        methods with their own scheme (the defaults: spread draws, one critic)."""
        student = student or StudentConfig()
        self.ctx = ctx
        self.first_only_iters = int(round(student.first_only * ctx.train.iters)) if len(sigmas) > 1 else 0
        self.sigma_data = teacher.config.get("sigma_data", 0.5)
        self.num_classes = teacher.num_classes
        self.class_weights = (teacher.class_weights or [1.0] * self.num_classes) if self.num_classes else []
        self.real = RealScore(teacher.denoiser.to(ctx.device), guidance, self.num_classes)
        gen = init_copy(teacher.init_net, ctx.device, student.fourier_cap, student.lora_rank)
        self.gen = ctx.prepare(gen)  # then the EMA: from the weights every process holds after prepare
        self.ema = ema_copy(ctx.unwrap(self.gen))
        if student.critic_per_step and len(sigmas) > 1:
            critic = StepCritics([Critic(init_copy(teacher.init_net, ctx.device), gan, self.name) for _ in sigmas])
        else:
            critic = Critic(init_copy(teacher.init_net, ctx.device), gan, self.name)
        self.critic = ctx.prepare(critic.to(ctx.device))
        self.opt_g = ctx.make_optimizer(self.gen.parameters())
        self.opt_c = ctx.make_optimizer(self.critic.parameters(), lr=lr_critic or None)
        self.set_student(teacher.schedule, sigmas, teacher.shape, ctx.device, student)

    def modules(self):
        return {"gen": self.gen, "critic": self.critic, "ema": self.ema}

    def optimizers(self):
        return {"gen": self.opt_g, "critic": self.opt_c}

    def export(self):
        return {f"gen.{k}": v for k, v in merged_state_dict(self.ema).items()}, {}

    def sampler(self):
        return self.ema

    def batch_and_labels(self, batch) -> tuple[int, torch.Tensor | None]:
        """The batch size, and the batch's labels, or labels drawn with the data's class frequencies."""
        n = self.ctx.train.batch_size
        if batch.labels is not None or not self.num_classes:
            return n, batch.labels
        return n, draw_labels(self.class_weights, n, self.ctx.device)

    def step(self, batch, it: int) -> dict[str, float]:
        """The two time-scale rule: the critic every iteration, the student every `opts.critic_ratio`-th."""
        self.student.active = 1 if it < self.first_only_iters else len(self.student.sigmas)
        logs = self.critic_step(batch, getattr(self.opts, "gan_weight_d", 0.0))
        if it % self.opts.critic_ratio == 0:
            logs.update(self.generator_step(batch))
        return logs

    def student_turn(self, batch) -> tuple[int, torch.Tensor | None, torch.Tensor, nn.Module]:
        """The start of a student update: batch size, labels, each sample's step, and the frozen critic."""
        n, cond = self.batch_and_labels(batch)
        steps = self.student.pick_step(self.ctx.shared_generator, n)
        return n, cond, steps, self.frozen_critic()

    # the single student's updates: DistributionMatching's, on this method's networks and optimizers
    def critic_step(self, batch, gan_weight_d: float = 0.0) -> dict[str, float]:
        n, cond = self.batch_and_labels(batch)
        return self.fit_critic(self.gen, self.critic, self.opt_c, n, cond, batch.x, gan_weight_d)

    def update_critic(self, loss: torch.Tensor, clip: bool = True) -> None:
        self.optimizer_step(self.critic, self.opt_c, loss, clip)

    def frozen_critic(self) -> nn.Module:
        return self.freeze(self.critic)

    def step_generator(self, loss: torch.Tensor, ema_updates: int) -> None:
        self.train_generator(self.gen, self.opt_g, self.ema, loss, ema_updates)

    def update_generator(self, loss: torch.Tensor, critic: nn.Module) -> None:
        self.end_student_turn(self.gen, self.opt_g, self.ema, critic, self.opt_c, loss)
