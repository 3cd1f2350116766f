import os

import pytest
import torch

# Two pytest workers on two cores: one torch thread each, or OpenMP oversubscription slows everything many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Feature-network caches go to a per-session temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("DISTMATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
