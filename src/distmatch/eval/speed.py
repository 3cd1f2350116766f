"""Sampling speed and memory: the numbers that justify a 1-4 step student over a many-step teacher.

Timings follow evaluation.md: fixed batch size, warm-up calls at the benchmark shape (the first calls pay for
allocation and kernel selection), inference mode, CUDA synchronised around the clock, median of repeats.
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_throughput(sample_fn, n: int, batch: int, repeats: int = 3, warmup: int = 2) -> dict:
    """Time `sample_fn(batch)` producing n samples (ceil(n / batch) full batches) `repeats` times.

    Every call uses the same batch size so no repeat pays for a new shape.  Returns the median samples/s and
    seconds per batch, with the settings that make the number reproducible.
    """
    if n <= 0 or batch <= 0 or repeats <= 0:
        raise ValueError("n, batch and repeats must be positive")
    calls = math.ceil(n / batch)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            sample_fn(batch)
        for _ in range(repeats):
            _sync()
            start = time.perf_counter()
            for _ in range(calls):
                sample_fn(batch)
            _sync()
            times.append(time.perf_counter() - start)
    med = max(statistics.median(times), 1e-12)  # a trivial sample_fn can finish below timer resolution
    return {
        "samples_per_s": calls * batch / med,
        "seconds_per_batch": med / calls,
        "batch": batch,
        "n": calls * batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """A live process's own peak resident set size in MiB (Linux's VmHWM), or None where /proc does not say.

    Not getrusage's ru_maxrss: on Linux that starts from the RSS of the process that spawned it (the kernel keeps
    the larger of the two across exec), so a small child of a large parent reports the parent's size."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_memory_mb() -> float:
    """Peak memory in MiB: CUDA allocator peak when CUDA is in use, else this process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    own = peak_rss_mb()
    if own is not None:
        return own
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
