"""End-to-end: the real `dvc repro` graph on the smoke profile (tiny model, a handful of examples).

One language (glg) and one culture (gr), so every stage family runs once. The second
`dvc repro` must find nothing to do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _smoke_params(repo: Path) -> None:
    text = (repo / "params.yaml").read_text()
    text = re.sub(r"^profile: .*$", "profile: smoke", text, flags=re.M)
    text = re.sub(r"^languages: .*$", "languages: [glg]", text, flags=re.M)
    text = re.sub(r"^cultures: .*$", "cultures: [gr]", text, flags=re.M)
    text = re.sub(r"^packs: .*$", "packs: [glg, gr]", text, flags=re.M)
    (repo / "params.yaml").write_text(text)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([str(dvc), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=3000)


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    from tests.conftest import REPO, tracked_files

    repo = tmp_path_factory.mktemp("e2e") / "repo"
    for rel in tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((REPO / rel).read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _smoke_params(repo)
    proc = _dvc(repo, "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo


def test_graph_writes_valid_scorecard(smoke_repo):
    rows = json.loads((smoke_repo / "reports" / "scorecard.json").read_text())
    keys = {"pack", "kind", "stage", "metric", "value", "ci_low", "ci_high", "baseline", "delta", "n",
            "higher_is_better"}
    assert rows and all(keys <= set(r) for r in rows)
    assert all(r["value"] is not None or r.get("note") for r in rows)
    stages = {(r["pack"], r["stage"]) for r in rows}
    assert ("glg", "data") in stages
    assert ("_shared", "rm_train") in stages   # stages that run once reach the scorecard (scorecard_shared)
    assert (smoke_repo / "reports" / "index.html").exists() and (smoke_repo / "reports" / "scorecard.md").exists()


def test_every_metric_file_has_signature(smoke_repo):
    files = list((smoke_repo / "results").rglob("*.json"))
    metrics = [f for f in files if not f.name.endswith(".rows.json")]
    assert metrics
    for f in metrics:
        data = json.loads(f.read_text())
        assert isinstance(data.get("signature"), str) and "torch:" in data["signature"], f
        if f.name.count(".") == 1:  # <stage>.json: DVC metrics, flat numbers; <stage>.<part>.json: details
            assert all(isinstance(v, (int, float)) for k, v in data.items() if k not in ("signature", "settings")), f
            assert "settings" not in data or isinstance(data["settings"], dict), f   # resolved params the stage read


def test_second_repro_changes_nothing(smoke_repo):
    proc = _dvc(smoke_repo, "status")
    # model_fingerprint is always_changed by design (seconds; its output decides whether `model` reruns)
    rest = proc.stdout.replace("model_fingerprint:\n\talways changed\n", "")
    assert proc.returncode == 0 and ("up to date" in rest or not rest.strip()), proc.stdout
