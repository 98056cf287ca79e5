"""Shared fixtures: throwaway copies of the repository.

Tests read real data through the resolver (mirror in POLYALIGN_MIRROR, then the cache, then a
download); .ci/run names the CI machine's mirror."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def tracked_files(root: Path = REPO) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if (root / line).is_file()]


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
