"""model_fingerprint: what the configured model names resolve to, on every `dvc repro`.

DVC cannot list a model folder or hub revision as a dependency when params.yaml may name
a registry build, a hub id or a local folder. This stage is `always_changed` and cheap: it
writes `models/fingerprint.json` ({name: models.fingerprint(name)}: the registry spec
hash, the hub commit, or the sha256 of a local folder's weights, config and tokenizer).
DVC compares that file's hash with the last run, so `model` and everything downstream
rerun exactly when the weights behind a name changed: new files in a local folder, or a
different hub revision.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.models import fingerprint
from pipeline.paths import repo_root

OUT = Path("models") / "fingerprint.json"


def run(out: Path | None = None) -> dict:
    cfg = section("model")
    names = [cfg["base"], *(cfg.get("helpers") or [])]
    result = {name: fingerprint(name) for name in names}
    io.write_json(out or repo_root() / OUT, result)
    return result


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, "record what the configured model names resolve to", pack=False))
