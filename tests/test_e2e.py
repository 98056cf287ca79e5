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
    assert proc.returncode == 0 and "Data and pipelines are up to date" in proc.stdout, proc.stdout
    proc = _dvc(smoke_repo, "repro")
    assert proc.returncode == 0 and not re.findall(r"Running stage '([^']+)'", proc.stdout), proc.stdout[-2000:]


# --------------------------------------------------------------------------- DVC across runs
def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def committed(smoke_repo):
    """The built smoke repo committed: results/, reports/ and dvc.lock in git, data/ and models/ in DVC's cache."""
    if _git(smoke_repo, "status", "--porcelain"):
        _git(smoke_repo, "add", "-A")
        _git(smoke_repo, "commit", "-qm", "smoke run")
    return smoke_repo


def test_pulled_clone_is_up_to_date_without_rerunning(committed, tmp_path):
    """dvc push to a local-folder remote; a git clone + dvc pull reruns nothing."""
    remote = tmp_path / "remote"
    for args in (("remote", "add", "-f", "-d", "store", str(remote)), ("push",)):
        proc = _dvc(committed, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(committed), str(clone)], check=True)
    # the remote's path is in the committed .dvc/config only after a commit; point the clone at it
    assert _dvc(clone, "remote", "add", "-f", "-d", "store", str(remote)).returncode == 0
    proc = _dvc(clone, "pull")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = _dvc(clone, "status").stdout
    assert status.strip() == "Data and pipelines are up to date.", status
    proc = _dvc(clone, "repro")
    ran = re.findall(r"Running stage '([^']+)'", proc.stdout)
    assert proc.returncode == 0 and ran == [], proc.stdout[-2000:]


def test_experiments_differing_in_one_param_show_and_diff(committed):
    """`dvc exp run -S laft.lr=... laft@glg` twice (the target keeps the test short; without it the
    stages downstream rerun too), then exp show / exp diff / metrics diff see both runs."""
    for name, lr in (("lr-low", "0.0001"), ("lr-high", "0.003")):
        proc = _dvc(committed, "exp", "run", "-n", name, "-S", f"laft.lr={lr}", "laft@glg")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert re.findall(r"Running stage '([^']+)'", proc.stdout) == ["laft@glg"], proc.stdout
    shown = json.loads(_dvc(committed, "exp", "show", "--json").stdout)
    exps = {e["name"]: e for base in shown for e in (base.get("experiments") or [])
            for e in [e["revs"][0]] if e.get("name")}
    assert {"lr-low", "lr-high"} <= set(exps)
    lrs, losses = {}, {}
    for name in ("lr-low", "lr-high"):
        data = exps[name]["data"]
        lrs[name] = data["params"]["params.yaml"]["data"]["laft"]["lr"]
        losses[name] = data["metrics"]["results/glg/laft.json"]["data"]["final_loss"]
    assert lrs == {"lr-low": 0.0001, "lr-high": 0.003} and losses["lr-low"] != losses["lr-high"]
    diff = json.loads(_dvc(committed, "exp", "diff", "lr-low", "lr-high", "--json").stdout)
    change = diff["params"]["params.yaml"]["laft.lr"]
    assert (change["old"], change["new"]) == (0.0001, 0.003)
    assert diff["metrics"]["results/glg/laft.json"]["final_loss"]["new"] == losses["lr-high"]
    # the workspace holds the last experiment: its metrics differ from the commit's
    proc = _dvc(committed, "metrics", "diff", "HEAD", "--json")
    assert "failed to load" not in proc.stderr, proc.stderr   # every metrics file is in git at HEAD
    assert json.loads(proc.stdout)["results/glg/laft.json"]["settings.laft.lr"]["new"] == 0.003
