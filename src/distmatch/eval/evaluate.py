"""Evaluate a loaded teacher or student against reference data: quality metrics and speed, as one dict.

Image metrics use an in-domain feature network trained on the model's own training data (cached by its
fingerprint), so samples are scored against held-out references by a network that never saw those references.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data import Dataset, dataset_fingerprint, load_data
from ..errors import UserError
from .features import default_cache_dir, extract, get_feature_net
from .inception import inception_metrics, inception_path
from .images import class_coverage, feature_metrics
from .speed import measure_throughput
from .vectors import vector_metrics


def feature_training_data(model, reference: Dataset, data: str | None = None) -> Dataset:
    """The model's training data when it can still be read, else (a foreign teacher knows none) the training split
    of the data it is scored on, so it and its students are scored on one network; else the reference itself (said
    in the result)."""
    own = bool(model.spec.source) or model.spec.kind != "image"
    source = model.spec.source or data
    if source and (Path(source).exists() or "/" not in source):
        try:  # a foreign teacher's data keep their own labels and value range (mapped to [-1, 1])
            return load_data(source, spec=model.spec if own else None)
        except UserError:
            pass
    return reference


def image_scores(samples, sample_labels, reference: Dataset, train: Dataset, inception=None,
                 progress: bool = True) -> dict:
    """FD / KID / PRDC on Inception features when a weights file is named (else on the in-domain network's, and
    the result says which), and the classes covered by the in-domain classifier."""
    net = get_feature_net(train.x, train.labels, dataset_fingerprint(train) + "-train", progress=progress)
    fake, fake_logits = extract(net, samples)
    out = {"feature_net": net.kind,
           "feature_net_trained_on": "training data" if train is not reference else "reference"}
    path = inception_path(inception)
    if path is not None:  # the in-domain network still gives class coverage; Inception gives the rest
        out.update(inception_metrics(samples, reference, path, default_cache_dir(), progress))
        del out["feature_net_trained_on"]
    else:
        real, _ = extract(net, reference.x)
        out.update(feature_metrics(fake, real))
        out["fd_name"] = f"fd_{net.kind}"
    if fake_logits is not None:
        out.update(class_coverage(fake_logits, net.config["num_classes"], requested=sample_labels))
    return out


MIN_SCORED = 10


def evaluate_model(model, reference: Dataset, n: int = 2000, steps: int | None = None, seed: int = 0,
                   speed: bool = True, train: Dataset | None = None, inception=None, data: str | None = None,
                   progress: bool = True) -> dict:
    """Metrics of `n` samples of `model` (at `steps`) against `reference` (both in the model's normalised space);
    `data`: where the reference came from (a preset or a path), for the in-domain network's training data;
    `progress`: bars over a teacher's sampling and the feature networks' work."""
    steps = model.check_steps(steps)
    if min(n, len(reference.x)) < MIN_SCORED:  # MMD and energy need two points, PRDC six (k = 5 neighbours)
        raise UserError(f"scoring needs at least {MIN_SCORED} samples and {MIN_SCORED} reference points, got n={n} "
                        f"and {len(reference.x)}")
    if model.spec.kind == "image":
        inception_path(inception)  # a weights file named but missing is said before the sampling, not after it
    t0 = time.perf_counter()
    samples, labels = model.sample(n, steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    model.check_finite(samples)
    result = {"kind": model.kind, "method": model.config.get("method"), "steps": steps, "nfe": model.nfe(steps),
              "n": n, "n_reference": len(reference.x), "sampling_seconds": round(seconds, 4)}
    if model.kind == "teacher":
        result["solver"] = model.config["solver"]
    if model.spec.kind == "vector":
        result.update(vector_metrics(samples, reference.x, reference.mixture))
    else:
        train = train or feature_training_data(model, reference, data)
        result.update(image_scores(samples, labels, reference, train, inception, progress))
    if speed:
        batch = min(n, 1024 if model.spec.kind == "vector" else 256)
        # a many-step sampler warms itself up and is long enough to time once (a 1000-step teacher: minutes)
        repeats, warmup = (1, 0) if model.nfe(steps) >= 100 else (3, 1)
        result["speed"] = measure_throughput(lambda b: model.sample(b, steps, seed=seed, batch_size=b), n=batch,
                                             batch=batch, repeats=repeats, warmup=warmup)
        result["samples_per_s"] = result["speed"]["samples_per_s"]
    return result
