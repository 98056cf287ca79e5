"""Shared fixtures: the data mirror, and throwaway copies of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _mirror():
    """Tests read real data through the resolver: the mirror in POLYALIGN_MIRROR (.ci/run sets it) when set."""
    if not os.environ.get("POLYALIGN_MIRROR"):
        default = REPO.parent / "shared" / "mirror"
        if default.exists():
            os.environ["POLYALIGN_MIRROR"] = str(default)
    yield


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
