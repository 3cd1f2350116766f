"""Scores of the model while it trains (`train.eval_every`), and the best model kept in `best/`.

Every `eval_every` iterations (and at the start and the end), `eval_n` samples of the model as `sample` will load
it are scored against `eval_n` points of the run's own data: Inception FID when DISTMATCH_INCEPTION names the
weights, else the FD of the in-domain feature network; SWD for vectors. The scores go to `scores.json` and
TensorBoard; the best model so far is written to `best/`, a model folder like the run's (`sample --model RUN/best`).
A distilled student can peak before its last iteration: this keeps the peak without guessing the run's length.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoint as ckpt

SCORES = "scores.json"
BEST = "best"
SAMPLE_SEED = 0     # the same noise at every iteration: the scores differ by the model, not by the draw
REFERENCE_SEED = 1  # which points of the data are the reference


def metric_name(data, inception: Path | None) -> str:
    """What the scores are (the "fd_name" evaluation gives them): named up front, so a resumed run with other
    features is said, not mixed in."""
    from ..eval.features import feature_net_kind
    from ..eval.inception import FID_NAME

    if data.spec.kind == "vector":
        return "swd"
    return FID_NAME if inception is not None else f"fd_{feature_net_kind(data.labels)}"


class Scorer:
    """`as_model(method, it)`: the model being trained as a sampler (None: nothing to score at `it`);
    `save(method, folder, best)`: writes it as a model folder, `best` (its iteration and score) in its config."""

    def __init__(self, out: Path, cfg, data, as_model: Callable, save: Callable):
        from ..eval.inception import file_sha, inception_path

        self.out, self.every, self.n, self.data = Path(out), cfg.eval_every, cfg.eval_n, data
        self.progress = cfg.progress  # the bars of a first score (fitting the feature network, Inception)
        self.as_model, self.save = as_model, save
        self.inception = inception_path() if data.spec.kind == "image" else None  # a missing file is said now
        self.metric = metric_name(data, self.inception)
        # scores on another Inception file are not these: a resumed run compares the file's digest
        self.features = file_sha(self.inception) if self.inception else self.metric
        self.scores: list[dict] = []
        self._reference = None

    def due(self, it: int) -> bool:
        return self.every > 0 and it % self.every == 0

    def resume(self, start: int) -> None:
        """Keep the scores up to the checkpoint resumed from; scores of other features or size start over."""
        path = self.out / SCORES
        if not path.is_file():
            return
        try:
            stored = json.loads(path.read_text())
            same = (stored["features"], stored["n"]) == (self.features, self.n)
            self.scores = [s for s in stored["scores"] if s["it"] <= start and self.metric in s] if same else []
        except (ValueError, KeyError, TypeError):
            stored, same = None, False
        if not same:
            what = f"{stored.get('metric')} of n={stored.get('n')}" if isinstance(stored, dict) else "unreadable"
            print(f"note: the scores in {path} are {what}, not {self.metric} of n={self.n} on these features; scoring "
                  "starts over, and best/ is replaced at the next score", file=sys.stderr)

    @property
    def best(self) -> dict | None:
        return min(self.scores, key=lambda s: s[self.metric]) if self.scores else None

    def reference(self):
        """`eval_n` points of the data (all of them if fewer), the same ones at every score."""
        from ..data import Dataset

        if self._reference is None:
            d, g = self.data, torch.Generator().manual_seed(REFERENCE_SEED)
            idx = torch.randperm(len(d.x), generator=g)[:self.n]
            self._reference = Dataset(d.x[idx], None if d.labels is None else d.labels[idx], d.spec, d.mixture)
        return self._reference

    def measure(self, model) -> dict:
        from ..eval.evaluate import image_scores
        from ..eval.vectors import vector_metrics

        samples, labels = model.sample(self.n, seed=SAMPLE_SEED)
        model.check_finite(samples)
        ref = self.reference()
        if self.data.spec.kind == "vector":
            return vector_metrics(samples, ref.x, ref.mixture)
        out = image_scores(samples, labels, ref, self.data, self.inception, self.progress)
        return {self.metric if k == "fd" else k: v for k, v in out.items()}

    def __call__(self, method, it: int, writer=None) -> float:
        """Score the model at iteration `it`, keep it if it is the best so far; returns the seconds it took."""
        t0 = time.perf_counter()
        model = self.as_model(method, it)
        if model is None:
            return 0.0
        from ..eval.features import forked_rng

        with forked_rng():  # training draws the same numbers whether it is scored or not
            result = self.measure(model)
        record = {"it": it, **{k: v for k, v in result.items() if isinstance(v, (int, float))}}
        self.scores = [s for s in self.scores if s["it"] != it] + [record]
        best = self.best["it"] == it
        if best:  # written before the checkpoint at `it`: a run killed before it scores `it` again when resumed
            self.save(method, self.out / BEST, {"it": it, self.metric: record[self.metric], "n": self.n})
        ckpt.atomic_write_json(self.out / SCORES, {"metric": self.metric, "features": self.features, "n": self.n,
                                                   "best": self.best, "scores": self.scores})
        if writer is not None:
            for k in (self.metric, "kid", "precision", "recall"):
                if k in record:
                    writer.add_scalar(f"eval/{k}", record[k], it)
        from tqdm.auto import tqdm

        tqdm.write(f"iteration {it}: {self.metric} {record[self.metric]:.4g}"
                   + (" (best so far, in best/)" if best else f" (best {self.best[self.metric]:.4g} at iteration "
                      f"{self.best['it']})"), file=sys.stderr)
        return time.perf_counter() - t0

    def summary(self, total: int) -> str | None:
        if (b := self.best) is None:
            return None
        return (f"best {self.metric} {b[self.metric]:.4g} at iteration {b['it']} of {total}, kept in "
                f"{self.out / BEST} (sample it with --model {self.out / BEST})")


def make_scorer(out, cfg, preview, save, dataset):
    """The scores of `train.eval_every` (None when off); made on every process, so a refusal stops them all."""
    return Scorer(out, cfg, dataset, preview, save) if cfg.eval_every else None


def score_function(scorer, method, logger, start):
    """A function of the iteration that scores the model when a score is due (the main process only) and
    returns the seconds it took, which the run's clock leaves out; its start is scored before the loop."""
    if scorer is None or not logger.enabled:
        return lambda it, last=False: 0.0
    scorer.resume(start)

    def score(it: int, last: bool = False) -> float:
        return scorer(method, it, logger.writer) if scorer.due(it) or last else 0.0

    return score

