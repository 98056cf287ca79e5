"""model_fingerprint: what the configured model names resolve to, as a DVC-tracked file.

Writes `models/fingerprint.json` ({name: models.fingerprint(name)}: the registry spec hash,
the hub commit, or the sha256 of a local folder's weights, config and tokenizer); `model`
depends on it, so `model` and everything downstream rerun exactly when the weights behind a
name changed. The stage reruns when its params or code change, and when anything under
`models/local/` (a dependency) changes: local model folders live there, so DVC sees their files.
It is not `always_changed`, which kept a no-op `dvc repro` over its time budget. An unpinned hub
id is resolved when the stage runs; pin it (`org/model@<commit>`) to make the run reproducible.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.models import fingerprint, registry, split_revision
from pipeline.paths import inside, repo_root

OUT = Path("models") / "fingerprint.json"
LOCAL = Path("models") / "local"  # a dependency of this stage in dvc.yaml

log = logging.getLogger("polyalign")


def check_watched(name: str, field: str) -> None:
    """A local model folder must sit under models/local/, where DVC sees its files change."""
    path = Path(name).expanduser()
    if name in registry() or not path.exists():
        return
    if not inside(path, repo_root() / LOCAL):
        raise PolyalignError("params.yaml", field, f"local model folder {name} is outside {LOCAL}/, so DVC would not "
                             "see its files change", f"move it (or a copy) to {LOCAL}/<name> and set {field} to "
                             "that path")


def run(out: Path | None = None) -> dict:
    cfg = section("model")
    fields = [("model.base", cfg["base"]), *((f"model.helpers[{i}]", h) for i, h in enumerate(cfg.get("helpers") or []))]
    for field, name in fields:
        check_watched(name, field)
    result = {name: fingerprint(name) for _, name in fields}
    for field, name in fields:
        if result[name].startswith("hub-") and split_revision(name)[1] is None:
            log.warning("%s: %s is not pinned; resolved to %s. DVC resolves it again only when %s changes: pin it "
                        "as %s@<commit>", field, name, result[name], field, name)
    io.write_json(out or repo_root() / OUT, result)
    return result


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, "record what the configured model names resolve to", pack=False))
