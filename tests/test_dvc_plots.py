"""dvc.yaml's top-level plots load the curves pipeline.train writes and the gains compare writes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_report import _chromium, coloured_pixels

ROOT = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc")


def sh(repo: Path, *cmd: str) -> str:
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def write(repo: Path, loss_scale: float, monkeypatch) -> None:
    """Curves through pipeline.train.write_curves and gains through pipeline.scorecard.gains (the real writers)."""
    from pipeline import io
    from pipeline.scorecard import gains
    from pipeline.train import curve_file, write_curves

    monkeypatch.setenv("POLYALIGN_ROOT", str(repo))
    curve = [[s, 100 * s, round(loss_scale / s, 4), 3e-4, 250.0] for s in (1, 2, 3)]
    write_curves(curve_file("nya", "laft"), curve)
    write_curves(curve_file("_shared", "maft"), curve)
    rows = [{"pack": "nya", "stage": "laft_eval", "metric": "bpb_test", "delta": -0.05 * loss_scale,
             "higher_is_better": False, "verdict": "better"},
            {"pack": "npi", "stage": "laft_eval", "metric": "bpb_test", "delta": 0.01, "higher_is_better": False}]
    io.write_json(repo / "reports" / "plots" / "gains.json", gains(rows))


def plots_repo(tmp_path: Path, monkeypatch) -> Path:
    """A git + DVC repo with the project's dvc.yaml and params.yaml and one run's curves and gains."""
    repo = tmp_path / "r"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    write(repo, 4.0, monkeypatch)
    return repo


@pytest.mark.skipif(DVC is None, reason="dvc not installed")
def test_plots_show_and_diff_render_curves_and_gains(tmp_path, monkeypatch):
    repo = plots_repo(tmp_path, monkeypatch)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    write(repo, 2.0, monkeypatch)
    shown = json.loads(sh(repo, "dvc", "plots", "show", "--json"))
    mine = [e for e in shown.get("errors", []) if e["source"].startswith(("results/_curves/", "reports/plots/"))]
    assert not mine, mine  # (stage-level plots of stages not run here are missing, as they should be)
    data = shown["data"]
    for q in ("loss", "lr", "tokens_per_s"):
        spec = data[f"results/_curves/{q}/nya.laft.tsv"][0]["content"]
        assert [float(v[q]) for v in spec["data"]["values"]][:1] and spec["data"]["values"][0]["step"] == "1"
    gains = data["reports/plots/gains.json"][0]["content"]["data"]["values"]
    assert {(g["comparison"], round(float(g["gain"]), 3)) for g in gains} == {
        ("nya / laft_eval / bpb_test", 0.1), ("npi / laft_eval / bpb_test", -0.01)}
    diff = json.loads(sh(repo, "dvc", "plots", "diff", "HEAD", "--json"))
    values = diff["data"]["results/_curves/loss/nya.laft.tsv"][0]["content"]["data"]["values"]
    assert {(v["rev"], v["step"], float(v["loss"])) for v in values if v["step"] == "1"} == {
        ("HEAD", "1", 4.0), ("workspace", "1", 2.0)}
    sh(repo, "dvc", "plots", "show", "-o", "out")
    html = (repo / "out" / "index.html").read_text()
    # one vegaEmbed per plot; ids are the paths with separators as "_" (this page loads vega from a
    # CDN; the offline page is rendered in a browser by the next test)
    assert "vegaEmbed('#results__curves_loss_nya_laft_tsv'" in html and "vegaEmbed('#reports_plots_gains_json'" in html


@pytest.mark.skipif(DVC is None or _chromium() is None, reason="dvc or chromium not installed (make test installs both)")
def test_plots_page_renders_offline_in_headless_chromium(tmp_path, monkeypatch):
    """`dvc plots show --html-template "$(polyalign plots-template)"`: every plot becomes a drawn
    vega canvas in a browser that may not reach any network."""
    from pipeline.plots import offline_template

    repo = plots_repo(tmp_path, monkeypatch)
    template = offline_template()
    sh(repo, "dvc", "plots", "show", "--html-template", str(template), "-o", "out")
    page = repo / "out" / "index.html"
    html = page.read_text()
    plots = html.count("vegaEmbed('#")   # 3 curves x 2 runs, the gains chart, and the stage-level plots
    assert "cdn.jsdelivr" not in html and plots >= 7
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={tmp_path / 'prof'}", "--virtual-time-budget=10000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         env=env, check=True).stdout
    assert dom.count("<canvas") == plots == dom.count('class="vega-embed'), dom[:2000]
    shot = tmp_path / "shot.png"
    subprocess.run([*base, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, env=env, check=True)
    assert coloured_pixels(shot) > 0.001   # drawn lines and bars (an empty page is grey-scale: 0)
