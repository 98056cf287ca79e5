"""Where things live: the repository, the cache, the mirror; and path safety checks."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import PolyalignError

REPO = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The project root; `POLYALIGN_ROOT` overrides it (tests run copies of the repo)."""
    return Path(os.environ.get("POLYALIGN_ROOT", Path.cwd() if (Path.cwd() / "dvc.yaml").exists() else REPO)).resolve()


def cache_dir() -> Path:
    """Per-user cache for downloads and materialised models (`POLYALIGN_CACHE`)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polyalign"
    path = Path(os.environ.get("POLYALIGN_CACHE", default)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def mirror_dir() -> Path | None:
    """The read-only data mirror named by `POLYALIGN_MIRROR`, if any."""
    value = os.environ.get("POLYALIGN_MIRROR")
    return Path(value).expanduser().resolve() if value else None


def inside(path: Path, *roots: Path) -> bool:
    path = path.resolve()
    return any(path == r.resolve() or r.resolve() in path.parents for r in roots)


def safe_join(root: Path, relative: str, *, file: str | Path, field: str) -> Path:
    """Join `relative` under `root`, refusing absolute paths and `..` escapes."""
    if Path(relative).is_absolute() or not inside(root / relative, root):
        raise PolyalignError(file, field, f"path '{relative}' leaves {root}",
                             "use a path relative to, and inside, that directory")
    return (root / relative).resolve()


SHARED = "_shared"  # the pack id of stages that run once (lid, rm_train, maft, culture_sft_all)


def results_dir(pack: str) -> Path:
    return repo_root() / "results" / pack


def data_dir(pack: str) -> Path:
    return repo_root() / "data" / pack
