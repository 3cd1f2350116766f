"""DMD2 (Yin et al. 2024, arXiv 2405.14867): distribution matching without regression.

Each iteration updates the critic (fake score, + GAN discriminator head) on detached student samples; every
`critic_ratio`-th iteration also updates the student with the distribution-matching gradient (+ the generator's
GAN loss). K-step students are trained by backward simulation on fixed noise levels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..schedules import karras_grid_1000, sample_grid_sigmas
from ..training.ema import ema_copy, ema_update
from ..training.method import Batch, Method
from .common import Critic, FewStepStudent, RealScore, draw_labels, init_copy, noised
from .losses import critic_loss, dm_gradient, dm_loss, gan_discriminator_loss, gan_generator_loss


# In 2-D/low-D the GAN made students worse and halved iterations/s (bench/RESULTS.md): off for vectors by default.
DEFAULTS = {"vector": {"dmd2": {"gan": False}}}


@dataclass
class Options:
    critic_ratio: int = 5              # critic updates per student update (two time-scale rule)
    dm_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # DM noise levels: fractions of the Karras grid
    guidance: float = 1.0              # classifier-free guidance on the real (teacher) score; 1 = none
    lr_critic: float = 0.0             # 0 = train.lr
    gan: bool = True                   # GAN loss on real data vs student samples
    gan_weight_g: float = 0.5          # generator GAN weight: with gan_balance, the GAN gradient's norm on the samples
                                       # as a fraction of the DM gradient's (DMD2's advice: make the two comparable)
    gan_weight_d: float = 1e-2         # discriminator loss weight inside the critic loss (keep <= 1e-2)
    gan_balance: bool = True           # false: gan_weight_g multiplies the GAN loss directly, as in DMD2's code
                                       # (3e-3 there); true: one weight serves 2-D points and images of any size

    def validate(self):
        if self.critic_ratio < 1:
            raise UserError(f"dmd2.critic_ratio must be >= 1, got {self.critic_ratio}")
        lo, hi = self.dm_range if len(self.dm_range) == 2 else (None, None)
        if lo is None or not 0 <= lo < hi <= 1:
            raise UserError(f"dmd2.dm_range must be two fractions 0 <= lo < hi <= 1, got {self.dm_range}")
        if self.guidance < 0 or self.gan_weight_g < 0 or self.gan_weight_d < 0:
            raise UserError("dmd2.guidance and the GAN weights must be >= 0")


class DMD2(Method):
    name = "dmd2"

    @classmethod
    def needs_data(cls, cfg) -> bool:
        return cfg.dmd2.gan

    def __init__(self, ctx, teacher, cfg, sigmas: list[float]):
        opts = getattr(cfg, self.name)
        self.ctx, self.opts = ctx, opts
        self.sigma_data = teacher.config.get("sigma_data", 0.5)
        self.num_classes = num_classes = teacher.num_classes
        shape = teacher.spec.shape
        self.class_weights = teacher.class_weights
        self.real = RealScore(teacher.denoiser.to(ctx.device), opts.guidance, num_classes)
        gen = init_copy(teacher.init_net, ctx.device)
        self.ema = ema_copy(gen)
        self.gen = ctx.prepare(gen)
        self.critic = ctx.prepare(Critic(init_copy(teacher.init_net, ctx.device), opts.gan).to(ctx.device))
        self.opt_g = ctx.make_optimizer(self.gen.parameters())
        self.opt_c = ctx.make_optimizer(self.critic.parameters(), lr=opts.lr_critic or None)
        self.student = FewStepStudent(sigmas, shape, ctx.device)
        self.grid = karras_grid_1000().float()

    def modules(self):
        return {"gen": self.gen, "critic": self.critic, "ema": self.ema}

    def optimizers(self):
        return {"gen": self.opt_g, "critic": self.opt_c}

    def batch_and_labels(self, batch: Batch):
        n = self.ctx.train.batch_size
        if batch.labels is not None or not self.num_classes:
            return n, batch.labels
        return n, draw_labels(self.class_weights, n, self.ctx.device)

    def grid_sigmas(self, n: int) -> torch.Tensor:
        return self.grid[torch.randint(0, 1000, (n,))].to(self.ctx.device)

    def step(self, batch: Batch, it: int) -> dict[str, float]:
        logs = self.critic_step(batch)
        if it % self.opts.critic_ratio == 0:
            logs.update(self.generator_step(batch))
        return logs

    def critic_step(self, batch: Batch) -> dict[str, float]:
        n, cond = self.batch_and_labels(batch)
        k = self.student.pick_step(self.ctx.shared_generator)
        with torch.no_grad(), self.ctx.autocast():
            fake = self.student.sample(self.gen, n, cond, k, grad=False).float()
        sigma = self.grid_sigmas(n)
        x_t = noised(fake, sigma)
        logs = {}
        with self.ctx.autocast():
            if self.opts.gan:  # one pass over noisy fake and noisy real samples
                sigma_r = self.grid_sigmas(n)
                both = torch.cat([x_t, noised(batch.x, sigma_r)])
                cond2 = torch.cat([cond, cond]) if cond is not None else None
                x0, logits = self.critic(both, torch.cat([sigma, sigma_r]), cond2)
                loss_fake = critic_loss(x0[:n], fake, sigma, self.sigma_data)
                loss_d = gan_discriminator_loss(logits[:n], logits[n:])
                loss = loss_fake + self.opts.gan_weight_d * loss_d
                logs["loss_gan_d"] = loss_d.item()
            else:
                x0, _ = self.critic(x_t, sigma, cond)
                loss = loss_fake = critic_loss(x0, fake, sigma, self.sigma_data)
        self.opt_c.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        self.ctx.clip(self.critic)
        self.opt_c.step()
        logs["loss_critic"] = loss_fake.item()
        return logs

    def generator_step(self, batch: Batch) -> dict[str, float]:
        n, cond = self.batch_and_labels(batch)
        k = self.student.pick_step(self.ctx.shared_generator)
        critic = self.ctx.unwrap(self.critic)  # frozen during the student's turn; gradients flow to x only
        critic.requires_grad_(False)
        with self.ctx.autocast():
            x = self.student.sample(self.gen, n, cond, k, grad=True).float()
        lo, hi = self.opts.dm_range
        sigma = sample_grid_sigmas(n, lo, hi, device=self.ctx.device)
        with torch.no_grad(), self.ctx.autocast():
            x_t = noised(x.detach(), sigma)
            x0_fake, _ = critic(x_t, sigma, cond)
            g = dm_gradient(x, self.real(x_t, sigma, cond), x0_fake)
        loss_dm = dm_loss(x, g)
        loss, logs = loss_dm, {"loss_dm": loss_dm.item(), "dm_grad": g.abs().mean().item()}
        if self.opts.gan:
            with self.ctx.autocast():
                sigma_g = self.grid_sigmas(n)
                _, logits = critic(noised(x, sigma_g), sigma_g, cond)
            loss_g = gan_generator_loss(logits)
            loss = loss + self.gan_scale(loss_dm, loss_g, x) * loss_g
            logs["loss_gan_g"] = loss_g.item()
        self.opt_g.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        self.ctx.clip(self.gen)
        self.opt_g.step()
        self.opt_c.zero_grad(set_to_none=True)
        critic.requires_grad_(True)
        ema_update(self.ema, self.ctx.unwrap(self.gen), self.ctx.train.ema)
        return logs

    def gan_scale(self, loss_dm, loss_g, x) -> torch.Tensor | float:
        """The generator's GAN weight: fixed, or relative to the DM gradient's norm on the samples."""
        if not self.opts.gan_balance:
            return self.opts.gan_weight_g
        g_dm = torch.autograd.grad(loss_dm, x, retain_graph=True)[0]
        g_gan = torch.autograd.grad(loss_g, x, retain_graph=True)[0]
        return (self.opts.gan_weight_g * g_dm.norm() / (g_gan.norm() + 1e-12)).detach()

    def export(self):
        return {f"gen.{k}": v for k, v in self.ema.state_dict().items()}, {}


Method = DMD2
