"""User-facing errors: the command prints the message on one line and exits with status 2, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, data, config, command-line). The message names what is wrong."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class Interrupted(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) after its current step, checkpointed: calling the same command or
    function again resumes it. A KeyboardInterrupt, so code that stops on Ctrl-C stops on it alike."""
