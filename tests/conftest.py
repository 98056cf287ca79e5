"""Shared fixtures: throwaway copies of the repository.

Tests read real data through the resolver (mirror in POLYALIGN_MIRROR, then the cache, then a
download); .ci/run names the CI machine's mirror."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# Outputs of a run that git keeps (results/, reports/, dvc.lock): a test copy starts without them,
# as a clone that has never run would.
RUN_OUTPUTS = ("results/", "reports/", "dvc.lock")


def tracked_files(root: Path = REPO) -> list[str]:
    """The repository's source files: tracked or new, not ignored, without the committed run outputs."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines()
            if (root / line).is_file() and not line.startswith(RUN_OUTPUTS)]


@pytest.fixture
def repo_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the repository's files (no data, results or models); POLYALIGN_ROOT points at it."""
    dest = tmp_path / "repo"
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    monkeypatch.setenv("POLYALIGN_ROOT", str(dest))
    monkeypatch.chdir(dest)
    return dest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP barriers crawl on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
