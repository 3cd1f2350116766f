"""User-facing errors: the command prints the message on one line and exits with status 2, never a traceback."""
from __future__ import annotations

import re
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the user (file, data, config, command-line). The message names what is wrong."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


@contextmanager
def naming(path: str | None, name: str):
    """UserErrors raised inside that mention `path` say `name` instead (data given in memory are kept in a file of
    the run's own, which the user never made)."""
    try:
        yield
    except UserError as e:
        if not path or path not in str(e):
            raise
        raise UserError(str(e).replace(f"data '{path}'", name).replace(f"'{path}'", name).replace(path, name)) from None


def listed(items, first: int = 10) -> str:
    """Items for a message: all of a short list, else the first few and the count (a 1000-class model's classes
    would fill a screen, and a list cut short in silence reads as the whole)."""
    items = [str(i) for i in items]
    return ", ".join(items) if len(items) <= first else f"{', '.join(items[:first])}, ... ({len(items)} in all)"


class Interrupted(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) after its current step, checkpointed: calling the same command or
    function again resumes it. A KeyboardInterrupt, so code that stops on Ctrl-C stops on it alike."""


def out_of_memory(e: BaseException) -> str | None:
    """How much memory an allocation that failed asked for ("25.6 GB"; "" when torch does not say), or None when
    `e` is not a failed allocation (torch's CPU allocator and CUDA both raise a RuntimeError)."""
    text = str(e)
    if not isinstance(e, RuntimeError) or not ("can't allocate memory" in text or "out of memory" in text):
        return None
    size = re.search(r"allocate (\d+) bytes", text)  # CPU: "you tried to allocate N bytes"
    if size:
        return f"{int(size.group(1)) / 1e9:.3g} GB"
    size = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)  # CUDA: "Tried to allocate 2.00 GiB"
    return size.group(1) if size else ""
