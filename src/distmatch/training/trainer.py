"""The only training loop: teacher training and every distillation method run through `train()`.

It owns devices and processes (Hugging Face Accelerate: one CPU process by default, DDP under
`accelerate launch`), the data stream, learning-rate warm-up, logs (JSON lines + TensorBoard), a progress bar,
atomic checkpoints, and resuming: re-running the same command continues from the last checkpoint.
Ctrl-C (or SIGTERM) asks the loop to stop after the current step and checkpoint; a second Ctrl-C stops at once.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoint as ckpt
from ..errors import Interrupted, UserError
from .guards import (check_finite, check_finite_weights, check_launcher_options, check_not_foreign,
                     check_replicated, check_resumable, check_run_folder, check_same_run, folder_lock,
                     read_checkpoint_iteration)  # noqa: F401 (re-exported)
from .logging import RunLogger
from .method import Batch, Context, Method
from .scoring import make_scorer, score_function


@dataclass
class TrainConfig:
    iters: int = 2000             # training iterations (for distillation: critic updates)
    batch_size: int = 256         # samples per iteration (per process under accelerate)
    lr: float = 1e-4              # AdamW learning rate (student and critic unless the method sets its own)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    weight_decay: float = 0.0     # AdamW weight decay
    warmup: int = 0               # iterations over which the rate rises linearly from 0
    lr_decay: str = "none"        # none | cosine (to 0 at train.iters)
    cooldown: float = 0.0         # last fraction of train.iters over which the rate falls linearly to 0
    grad_clip: float = 10.0       # gradient-norm clip per network (0 = off)
    ema: float = 0.999            # decay of the exponential moving average of weights (what is saved and sampled)
    ema_warmup: bool = False      # decay min(ema, (1 + n) / (10 + n)) after n updates: a long horizon without
                                  # dragging the initial weights along
    precision: str = "fp32"       # fp32 | bf16 (mixed precision through accelerate)
    seed: int = 0                 # seed of noise, data order and pairs
    ckpt_every: int = 500         # iterations between checkpoints (also on Ctrl-C and at the end)
    log_every: int = 25           # iterations between log lines (log.jsonl, TensorBoard)
    progress: bool = True         # show a progress bar
    preview: bool = True          # picture the model's samples (same seed each time) at every checkpoint and
                                  # at the end (a student also at its start): previews/it*.png and TensorBoard
    eval_every: int = 0           # iterations between scores of the model against the run's data (0: off), also
                                  # at the start and the end: scores.json, TensorBoard, and the best model in best/
    eval_n: int = 1000            # samples (and data points) per score: Inception FID when DISTMATCH_INCEPTION
                                  # names the weights, else the in-domain FD; SWD for vectors

    def validate(self):
        for key in ("iters", "batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"config key 'train.{key}' must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:  # also refuses NaN
            raise UserError(f"config key 'train.lr' must be > 0, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise UserError(f"config key 'train.ema' must be in [0, 1), got {self.ema}")
        if not 0 <= self.seed < 2 ** 32:
            raise UserError(f"config key 'train.seed' must be in 0..{2 ** 32 - 1}, got {self.seed}")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"config key 'train.precision' must be fp32 or bf16, got {self.precision!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"config key 'train.betas' must be two numbers in [0, 1), got {self.betas}")
        if self.lr_decay not in ("none", "cosine"):
            raise UserError(f"config key 'train.lr_decay' must be none or cosine, got {self.lr_decay!r}")
        if self.weight_decay < 0 or self.warmup < 0:
            raise UserError(f"config keys 'train.weight_decay' and 'train.warmup' must be >= 0, got "
                            f"{self.weight_decay} and {self.warmup}")
        if not self.grad_clip >= 0:
            raise UserError(f"config key 'train.grad_clip' must be >= 0 (0: off), got {self.grad_clip}")
        if not 0 <= self.cooldown <= 1:
            raise UserError(f"config key 'train.cooldown' must be in [0, 1], got {self.cooldown}")
        if self.ckpt_every < 1 or self.log_every < 1:
            raise UserError("config keys 'train.ckpt_every' and 'train.log_every' must be >= 1")
        if self.eval_every < 0 or self.eval_n < 10:  # PRDC needs k + 1 = 6 points, MMD two: 10 as `evaluate`
            raise UserError(f"config keys 'train.eval_every' (>= 0, 0: off) and 'train.eval_n' (>= 10) got "
                            f"{self.eval_every} and {self.eval_n}")


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # several runs in one process (demo, tests)
    check_launcher_options(cfg)
    cpu = not torch.cuda.is_available()
    for kind in ("DEEPSPEED", "FSDP"):  # said before accelerate builds them (without deepspeed: its ImportError)
        if os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() == "true" and not (cpu and kind == "FSDP"):
            check_replicated(kind)
    try:
        # the main process scores alone (train.eval_every; a first score may fit the feature network) while the
        # others wait at the next collective: longer than NCCL's default 10 minutes allows
        waits = [InitProcessGroupKwargs(timeout=datetime.timedelta(hours=2))] if cfg.eval_every else []
        acc = Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.precision == "bf16" else "no", kwargs_handlers=waits)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"accelerate cannot start these processes: {str(e).splitlines()[0]}") from None
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != launched:  # each process would train alone, all of them into one run folder
        raise UserError(f"launched as {launched} processes, but accelerate's state was made for "
                        f"{acc.num_processes} before distmatch made it (a PartialState or Accelerator created "
                        "first, without cpu=True on a machine without GPUs): let distmatch create it")
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.is_main_process:
        print("distmatch: warning: FSDP needs GPUs; accelerate runs these CPU processes as DDP", file=sys.stderr)
    check_replicated(acc.distributed_type)
    return acc


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so a checkpoint is never taken mid-step."""

    def __init__(self):
        self.requested, self.first, self.stopping = False, None, False  # this process's request; the agreed stop

    def _handler(self, signum, frame):
        if self.requested:
            if signum != self.first[0] and time.monotonic() - self.first[1] < 1.0:
                return  # a launcher's SIGINT then SIGTERM (torch elastic sends both at once): one request
            raise KeyboardInterrupt
        self.requested, self.first = True, (signum, time.monotonic())
        if os.environ.get("RANK", "0") == "0":  # a launcher signals every process: one line, not one each
            print("\nstopping after this step and saving a checkpoint (press Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

    def agreed(self, acc) -> bool:
        """Whether to stop now, the same on every process: a signal that reached one of them stops them all at
        this step (each waiting for the others at a different step would hang)."""
        if acc.num_processes == 1:
            self.stopping = self.requested
        else:  # `requested` is never overwritten here: a signal that lands while this waits counts at the next step
            flag = torch.tensor([float(self.requested)], device=acc.device)
            self.stopping = bool(acc.reduce(flag, reduction="sum").item() > 0)
        return self.stopping

    @contextmanager
    def installed(self):
        try:
            old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (e.g. a launcher): no handlers, default behaviour
            yield self
            return
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class DataStream:
    """Random minibatches from an in-memory dataset; each process draws with its own seeded generator."""

    def __init__(self, dataset, batch_size: int, seed: int, device):
        self.x = dataset.x if dataset is not None else None
        self.labels = dataset.labels if dataset is not None else None
        self.batch_size, self.device = batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        if self.x is None:
            return Batch(torch.empty(0, device=self.device), None)
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        labels = self.labels[idx].to(self.device) if self.labels is not None else None
        return Batch(self.x[idx].to(self.device), labels)


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay, then an optional linear cool-down; a pure function of the
    iteration, so resuming needs no state."""
    factor = min(1.0, (it + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.lr_decay == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * min(it, cfg.iters) / cfg.iters))
    if cfg.cooldown > 0:
        factor *= min(1.0, max(0.0, cfg.iters - it) / (cfg.cooldown * cfg.iters))
    return factor


def _set_lr(optimizers: dict, it: int, cfg: TrainConfig) -> None:
    factor = lr_factor(it, cfg)
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor


def train(out_dir: str | Path, run_config: dict, train_cfg: TrainConfig, dataset,
          build_method: Callable[[Context], Method], description: str = "training",
          preview: Callable[[Method, int], object] | None = None,
          save: Callable[[Method, Path, dict], None] | None = None, eval_data=None) -> Method:
    """Run (or resume) a training run in `out_dir`; returns the method with its final state. `preview(method, it)`:
    the model as a sampler (its EMA weights) for pictures and scores, or None; `save(method, folder, best)`: writes
    it as a model folder (`train.eval_every`'s best); `eval_data`: what scores compare with, else the training data."""
    out = Path(out_dir)
    accelerator = make_accelerator(train_cfg)
    scorer = make_scorer(out, train_cfg, preview, save, dataset if eval_data is None else eval_data)  # before a folder
    check_run_folder(out)
    with folder_lock(out, accelerator):
        return _train(out, accelerator, run_config, train_cfg, dataset, build_method, description, preview, scorer)


def _train(out: Path, accelerator, run_config: dict, train_cfg: TrainConfig, dataset,
           build_method: Callable[[Context], Method], description: str,
           preview: Callable[[Method, int], object] | None, scorer) -> Method:
    check_same_run(accelerator, run_config)
    rank = accelerator.process_index
    torch.manual_seed(train_cfg.seed * 1000 + rank)
    ctx = Context(accelerator=accelerator, device=accelerator.device, train=train_cfg)
    ctx.shared_generator = torch.Generator().manual_seed(train_cfg.seed)  # same draws on every rank
    ctx.out_dir = out  # for methods that cache derived data beside the checkpoint
    method = build_method(ctx)
    data = DataStream(dataset, train_cfg.batch_size, train_cfg.seed * 1000 + rank + 17, accelerator.device)
    start = _resume(out, run_config, method, data, ctx)
    if start > train_cfg.iters:  # its weights are past the length asked for: a run cannot be shortened
        raise UserError(f"{out} is trained to iteration {start}, past train.iters={train_cfg.iters}; use another "
                        f"--out, or train.iters >= {start} to go on")
    if start == train_cfg.iters > 0:  # finished: its settings, log and TensorBoard files stay as they are
        return method
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(out / "run.json", {**run_config, "processes": accelerator.num_processes})
    logger = RunLogger(out, start, enabled=accelerator.is_main_process, window=getattr(ctx, "log_window", None))
    if start >= train_cfg.iters:
        logger.close()
        return method
    if accelerator.is_main_process and start > 0:
        print(f"resuming {description} from iteration {start} of {train_cfg.iters} in {out}", file=sys.stderr)
    show = _previewer(out, train_cfg, method, preview if accelerator.is_main_process else None, logger)
    score = score_function(scorer, method, logger, start)
    _loop(out, run_config, train_cfg, method, data, ctx, logger, start, description, show, score)
    if scorer is not None and accelerator.is_main_process and (line := scorer.summary(train_cfg.iters)):
        print(line, file=sys.stderr)
    return method


def _previewer(out, cfg, method, preview, logger):
    """A function of the iteration that draws the preview (doing nothing when previews are off)."""
    if preview is None or not cfg.preview:
        return lambda it: None
    from .preview import write_preview

    failed = []

    def show(it: int) -> None:
        # A picture is not worth a run: one that fails is reported once, and training goes on without pictures.
        if failed:
            return
        try:
            if (model := preview(method, it)) is not None:
                write_preview(out, model, it, logger.writer)
        except Exception as e:  # noqa: BLE001 (any failure of a side product)
            failed.append(it)
            line = (str(e).splitlines() or [""])[0]
            print(f"distmatch: warning: the preview at iteration {it} failed ({type(e).__name__}: {line}); "
                  "training goes on without previews (train.preview=false turns them off)", file=sys.stderr)

    return show


def _loop(out, run_config, cfg, method, data, ctx, logger, start, description, show, score):
    from tqdm.auto import tqdm

    acc = ctx.accelerator
    bar = tqdm(total=cfg.iters, initial=start, desc=description, dynamic_ncols=True, mininterval=0.5,
               disable=not (cfg.progress and acc.is_main_process), file=sys.stderr)
    stop = StopRequest()
    it, t0 = start, time.time() - logger.elapsed
    with stop.installed():  # from the first picture and score to the last checkpoint, a Ctrl-C is a request
        if start == 0:
            show(0)
            t0 += score(0)
        while it < cfg.iters and not stop.agreed(acc):
            _set_lr(method.optimizers(), it, cfg)
            ctx.it = it
            logs = method.step(data.next(), it)
            check_finite(logs, it, out, cfg.precision)
            it += 1
            logger.add(logs)
            bar.update(1)
            if it % cfg.log_every == 0 or it == cfg.iters:
                follow_thread_budget()
                rec = logger.flush(it, time.time() - t0)
                bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items() if k not in ("it", "time")}, refresh=False)
            if it < cfg.iters:
                t0 += score(it)  # before any checkpoint at `it`, as the preview
            if it % cfg.ckpt_every == 0 and it < cfg.iters:
                show(it)  # before the checkpoint: a run killed between the two draws it again when resumed
                save_checkpoint(out, run_config, method, data, ctx, it, window=logger.window())
        bar.close()  # a run stopped early keeps its unfinished log interval in the checkpoint, not in a record
        show(it)
        if it == cfg.iters:  # a run stopped early is scored where the schedule says, once resumed
            score(it, last=True)
        save_checkpoint(out, run_config, method, data, ctx, it, window=logger.window())
    logger.close()
    if stop.stopping and it < cfg.iters:
        raise Interrupted(f"stopped at iteration {it} of {cfg.iters}; checkpoint saved in {out}. "
                          "Re-run the same command to resume.")


THREADS_FILE_ENV = "DISTMATCH_THREADS_FILE"


def follow_thread_budget() -> None:
    """A launcher running several runs side by side (`distmatch compare`) may hand a run more CPU threads once
    others finish: the file named by $DISTMATCH_THREADS_FILE holds the number, read at every log step."""
    path = os.environ.get(THREADS_FILE_ENV)
    if not path:
        return
    try:
        n = int(Path(path).read_text())
    except (OSError, ValueError):
        return
    if n >= 1 and n != torch.get_num_threads():
        torch.set_num_threads(n)


def _rng_tensors(data: DataStream, ctx: Context) -> dict[str, torch.Tensor]:
    acc = ctx.accelerator

    def every_rank(mine: torch.Tensor) -> torch.Tensor:  # only the main process writes the checkpoint
        return acc.gather(mine.to(acc.device)[None]).cpu() if acc.num_processes > 1 else mine[None]

    gathered = every_rank(torch.cat([torch.get_rng_state(), data.generator.get_state()]))
    tensors = {f"rng/rank{r}": gathered[r] for r in range(gathered.shape[0])}
    tensors["rng/shared"] = ctx.shared_generator.get_state()
    if torch.cuda.is_available():
        cuda = every_rank(torch.cuda.get_rng_state())
        tensors.update({f"rng/cuda{r}": cuda[r] for r in range(cuda.shape[0])})
    return tensors


def save_checkpoint(out: Path, run_config: dict, method: Method, data: DataStream, ctx: Context, it: int,
                    window: dict | None = None) -> None:
    """The run's whole state at `it`; `window`: the logs since the last record (the logger's window())."""
    acc = ctx.accelerator
    check_finite_weights(method, acc, out, it, ctx.train.precision)
    tensors = _rng_tensors(data, ctx)  # a collective: every rank takes part
    if acc.is_main_process:
        optim_meta = {}
        for name, module in method.modules().items():
            tensors.update(ckpt.module_to_tensors(name, acc.unwrap_model(module)))
        for name, opt in method.optimizers().items():
            t, m = ckpt.optimizer_to_tensors(name, opt)
            tensors.update(t)
            optim_meta[name] = m
        meta = {"iteration": it, "config": run_config, "optimizers": optim_meta, "world_size": acc.num_processes,
                "log_window": window or {}}
        ckpt.save_tensors(out / ckpt.CHECKPOINT, tensors, meta)
    acc.wait_for_everyone()


def _resume(out: Path, run_config: dict, method: Method, data: DataStream, ctx: Context) -> int:
    path = out / ckpt.CHECKPOINT
    if not path.is_file():
        check_not_foreign(out, run_config)
        return 0
    try:
        tensors, meta = ckpt.load_tensors(path)
    except UserError as e:
        finished = (out / ckpt.CONFIG).is_file() and (out / ckpt.MODEL).is_file()
        raise UserError(f"{e}; the checkpoint is damaged: " + (
            "the run's model (model.safetensors) is apart from it, and sample, evaluate and export read it; delete "
            "the checkpoint only to train the run again from the start" if finished else
            "delete it to train this run again from the start")) from None
    acc, it = ctx.accelerator, int(meta["iteration"])
    finished = check_resumable(out, meta, run_config, acc)
    ctx.log_window = meta.get("log_window")  # the unfinished log interval, for the logger
    for name, module in method.modules().items():
        acc.unwrap_model(module).load_state_dict(ckpt.module_from_tensors(name, tensors))
    if not finished:  # a finished run needs its weights only (it may be re-run with another number of processes)
        _restore_training_state(tensors, meta, method, data, ctx)
    method.on_resume(it)
    return it


def _restore_training_state(tensors: dict, meta: dict, method: Method, data: DataStream, ctx: Context) -> None:
    """Optimizers and every random generator as they were at the checkpoint: the resumed run continues exactly."""
    acc = ctx.accelerator
    for name, opt in method.optimizers().items():
        opt.load_state_dict(ckpt.optimizer_from_tensors(name, tensors, meta["optimizers"][name]))
    state = tensors[f"rng/rank{acc.process_index}"]
    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n].clone())
    data.generator.set_state(state[n:].clone())
    ctx.shared_generator.set_state(tensors["rng/shared"].clone())
    if torch.cuda.is_available() and f"rng/cuda{acc.process_index}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng/cuda{acc.process_index}"])


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)
