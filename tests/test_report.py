"""scorecard@<pack>, compare and the rendered report (Markdown, HTML, headless Chromium)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import PolyalignError
from pipeline.mt_eval import COMET_NOT_COMPARABLE, ERROR_TYPES
from pipeline.report import SHARED, comparison, row, write_stage

LANGS, CULTURES = ["nya", "npi", "glg"], ["gr", "mx", "kr"]


def _mt_rows(pack: str, rng: random.Random) -> list[dict]:
    """Rows shaped like mt_errors@<lang> writes them (values synthetic)."""
    rows = []
    for d in ("en-xx", "xx-en"):
        ref = 30 + 20 * rng.random()
        for system in ("base", "laft", "taco"):
            v = ref if system == "base" else ref + rng.uniform(-5, 8)
            rows.append(row(pack, "language", "mt_errors", f"chrf++.{d}.{system}", v, ci=(v - 2, v + 2),
                            baseline=None if system == "base" else ref, n=200))
            rows.append(row(pack, "language", "mt_errors", f"comet.{d}.{system}", None, n=200,
                            note="skipped: no COMET checkpoint configured"))
            shares = [rng.uniform(0, 0.08) for _ in ERROR_TYPES]
            for name, share in zip(ERROR_TYPES, shares):
                rows.append(row(pack, "language", "mt_errors", f"err.{name}.{d}.{system}", share, n=200,
                                higher_is_better=False))
            rows.append(row(pack, "language", "mt_errors", f"err.any.{d}.{system}", sum(shares), n=200,
                            higher_is_better=False))
    for corpus in ("train_tgt", "mono_train"):
        j = rng.uniform(0.2, 0.6)
        rows.append(row(pack, "language", "mt_errors", f"jsd.{corpus}", j, ci=(j - 0.01, j + 0.01),
                        higher_is_better=False))
    return rows


def make_repo(root: Path) -> Path:
    """A repository root with six enabled packs, each with stage rows in results/ (POLYALIGN_ROOT must point at it)."""
    for kind, ids in (("languages", LANGS), ("cultures", CULTURES)):
        (root / kind).mkdir()
        for pack in ids:
            (root / kind / f"{pack}.yaml").write_text(f"id: {pack}\n")
    (root / "params.yaml").write_text(f"languages: {LANGS}\ncultures: {CULTURES}\n")
    rng = random.Random(0)
    for pack in LANGS:
        acc = 0.99
        write_stage(pack, "data", {}, [row(pack, "language", "data", "lid_accuracy", acc, ci=(0.97, 1.0), n=400)],
                    "sig|hw:cpu:x86_64x2:avx512+bf16")
        bpb = rng.uniform(1.5, 3)
        write_stage(pack, "laft_eval", {}, [row(pack, "language", "laft_eval", "bits_per_byte", bpb - 0.3,
                                                ci=(bpb - 0.35, bpb - 0.25), baseline=bpb, n=300,
                                                higher_is_better=False)], "sig")
        write_stage(pack, "mt_errors", {}, _mt_rows(pack, rng), "sig")
    for pack in CULTURES:
        kl = rng.uniform(0.1, 0.5)
        write_stage(pack, "culture_eval", {}, [row(pack, "culture", "culture_eval", "wvs_kl", kl - 0.05,
                                                   ci=(kl - 0.1, kl), baseline=kl, n=50, higher_is_better=False)]
                    + _culture_comparisons(pack), "sig")
    write_stage(SHARED, "rm_train", {}, _rm_rows(), "sig")
    return root


def _culture_comparisons(pack: str) -> list[dict]:
    """The tuned model's JSD against uniform (0.116) and the training prior (0.079): as on the default run,
    the prior is the strongest trivial baseline and the model (0.122) does not beat it."""
    kw = dict(n=40, n_docs=9, mde=0.02, higher_is_better=False)
    return [comparison(pack, "culture", "culture_eval", f"jsd_sft_vs_{b}", 0.122, v, delta_ci=(0.122 - v, lo, hi),
                       baseline_name=b, **kw)
            for b, v, lo, hi in (("uniform", 0.116, -0.004, 0.016), ("prior", 0.079, 0.02, 0.066),
                                 ("base", 0.2, -0.2, 0.044))]


def _rm_rows() -> list[dict]:
    """rm_train's held-out accuracy against chance (better) and length (underpowered) under _shared."""
    kw = dict(n=48, ci=(0.56, 0.82), mde=0.05)
    return [comparison(SHARED, "language", "rm_train", "heldout_accuracy_en", 0.70, 0.5,
                       delta_ci=(0.2, 0.07, 0.33), baseline_name="chance", **kw),
            comparison(SHARED, "language", "rm_train", "heldout_accuracy_en_vs_length", 0.70, 0.62,
                       delta_ci=(0.08, -0.06, 0.22), baseline_name="length", **kw)]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))
    return make_repo(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """make_repo plus every scorecard and the compare reports, built once for the module (rendering is slow)."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYALIGN_ROOT", str(root))
        _build(make_repo(root))
    return root


@pytest.fixture
def built_repo(built, monkeypatch):
    monkeypatch.setenv("POLYALIGN_ROOT", str(built))
    return built


def _build(repo: Path) -> None:
    from stages import compare, scorecard

    for pack in LANGS + CULTURES + [SHARED]:
        scorecard.run(pack)
    compare.run()


def test_scorecard_gathers_and_validates(repo):
    from stages.scorecard import gather, pack_scorecard_path, run

    run("nya")
    rows = json.loads(pack_scorecard_path("nya").read_text())
    assert {r["stage"] for r in rows} == {"data", "laft_eval", "mt_errors"}
    assert rows == gather("nya")
    assert all(set(r) - {"note", "machine"} == {"pack", "kind", "stage", "metric", "value", "ci_low", "ci_high",
                                                "baseline", "delta", "n", "higher_is_better"} for r in rows)
    # each row names the machine of its stage's signature (hw:), where the stage recorded one
    assert {r["stage"]: r.get("machine") for r in rows} == {"data": "cpu:x86_64x2:avx512+bf16", "laft_eval": None,
                                                           "mt_errors": None}


def test_shared_stages_are_gathered_and_joined(built_repo):
    """rm_train / maft / culture_sft_all rows (pack _shared) reach reports/scorecard.json and the report."""
    from pipeline.scorecard import pack_scorecard_path

    shared = json.loads(pack_scorecard_path(SHARED).read_text())
    assert [r["metric"] for r in shared] == ["heldout_accuracy_en", "heldout_accuracy_en_vs_length"]
    joined = json.loads((built_repo / "reports" / "scorecard.json").read_text())
    assert [r for r in joined if r["pack"] == SHARED] == shared
    assert "## rm_train (language)" in (built_repo / "reports" / "scorecard.md").read_text()


def test_report_names_the_machines_of_its_rows(built_repo):
    text = (built_repo / "reports" / "scorecard.md").read_text()
    assert "Machine: cpu:x86_64x2:avx512+bf16. '+bf16' marks a CPU with bf16 matrix units" in text
    assert "Machine: cpu:x86_64x2:avx512+bf16." in (built_repo / "reports" / "index.html").read_text()


def test_report_explains_a_capped_machine_only_where_one_made_rows():
    from pipeline.html_report import machines_text

    plain = machines_text([{"machine": "cpu:x86_64x2:avx512+bf16"}, {"machine": "cpu:x86_64x2:avx2"}])
    assert plain.startswith("Machines: cpu:x86_64x2:avx2, cpu:x86_64x2:avx512+bf16.") and "-capped" not in plain
    capped = machines_text([{"machine": "cpu:x86_64x2:avx2-capped"}])
    assert "'-capped' marks a run held below its CPU's instruction set" in capped


def test_shared_scorecard_refuses_a_pack_row(repo):
    from stages.scorecard import run

    (repo / "results" / SHARED / "x.rows.json").write_text(json.dumps([row("nya", "language", "x", "m", 1.0)]))
    with pytest.raises(PolyalignError, match=r"x\.rows\.json: \[0\]\.pack: 'nya'"):
        run(SHARED)


def test_compare_names_the_missing_shared_scorecard(repo):
    from stages import compare, scorecard

    for pack in LANGS + CULTURES:
        scorecard.run(pack)
    with pytest.raises(PolyalignError, match=r"scorecard_shared"):
        compare.run()


@pytest.mark.parametrize("bad, field", [
    ({"extra_key": 1}, "[0].extra_key"),
    ({"value": None}, "[0]"),
    ({"kind": "languages"}, "[0].kind"),
    ({"value": "0.5"}, "[0].value"),
    ({"delta": 0.4}, "[0]"),
    ({"n": -3}, "[0].n"),
])
def test_malformed_row_is_one_line_naming_the_file(repo, bad, field):
    from stages.scorecard import run

    good = row("glg", "language", "laft_eval", "bits_per_byte", 2.0, baseline=2.1, n=10, higher_is_better=False)
    path = repo / "results" / "glg" / "broken.rows.json"
    path.write_text(json.dumps([{**good, **bad}]))
    with pytest.raises(PolyalignError) as err:
        run("glg")
    line = err.value.line()
    assert "\n" not in line and str(path) in line and f": {field}:" in line


def test_row_of_another_pack_is_refused(repo):
    from stages.scorecard import run

    path = repo / "results" / "glg" / "x.rows.json"
    path.write_text(json.dumps([row("nya", "language", "x", "m", 1.0)]))
    with pytest.raises(PolyalignError, match=r"\[0\]\.pack"):
        run("glg")


def test_compare_writes_the_three_reports(built_repo):
    from stages.scorecard import validate_rows

    out = built_repo / "reports"
    rows = validate_rows(json.loads((out / "scorecard.json").read_text()), out / "scorecard.json")
    assert {r["pack"] for r in rows} == set(LANGS + CULTURES + [SHARED])
    comet = [r for r in rows if r["metric"].startswith("comet")]
    assert comet and all(COMET_NOT_COMPARABLE in r["note"] and "skipped" in r["note"] for r in comet)
    md = (out / "scorecard.md").read_text()
    assert "| chrf++.en-xx.laft |" in md and "## culture_eval (culture)" in md
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 5  # deltas, errors, scatter, one per stage
    corr = json.loads((out / "domain_similarity.json").read_text())
    assert "culture_eval · jsd_sft: does not beat the prior baseline (worse; Δ +0.043 [0.02, 0.066] vs prior)" \
        in md   # the prior (0.079) is stronger than uniform (0.116) and base (0.2)
    assert "_shared · rm_train · heldout_accuracy_en: beats the length baseline" not in md
    assert "_shared · rm_train · heldout_accuracy_en: does not beat the length baseline (underpowered: n = 48, " \
        "about 377 needed" in md   # length (0.62) is stronger than chance (0.5)
    assert "## Too small to decide" in md and "gr · culture_eval · jsd_sft_vs_base vs base: n = 40 (9 documents), " \
        "about 1489 needed" in md
    assert all(c["n"] >= 10 and c["ci_low"] <= c["r"] <= c["ci_high"] for c in corr)   # pooled, never 3 packs


def test_compare_names_the_missing_scorecard(repo):
    from stages import compare

    with pytest.raises(PolyalignError, match=r"scorecard@nya"):
        compare.run()


def test_compare_cli_filters(built_repo, capsys, monkeypatch):
    from pipeline.scorecard import compare_cli

    monkeypatch.setenv("COLUMNS", "200")
    shown = compare_cli(pack="glg,nya", stage="mt_errors", metric="chrf++.en-xx")
    assert {r["pack"] for r in shown} == {"glg", "nya"} and len(shown) == 6
    assert len(compare_cli(metric="err.*.xx-en.base")) == 3 * (len(ERROR_TYPES) + 1)  # + err.any
    out = capsys.readouterr().out
    assert "chrf++.en-xx.laft" in out and "polyalign scorecard" in out
    assert compare_cli(pack="nope") == []


# --------------------------------------------------------------------------- headless Chromium
def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def coloured_pixels(png: Path) -> float:
    """Share of clearly coloured pixels (plots; the page's text and tables are grey-scale)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    spread = img.max(axis=2) - img.min(axis=2)
    return float((spread > 60).mean())


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_with_plots_in_headless_chromium(built_repo, tmp_path):
    page = built_repo / "reports" / "index.html"
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--hide-scrollbars", "--window-size=1400,4000", f"--screenshot={shot}", page.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.exists()
    # measured on this report (verdict summary on top; only better/worse bars coloured, the rest grey):
    # 1.5% of the 1400x4000 screenshot is clearly coloured with the plots (0.5% in the first 2200 px),
    # 0.0% when the same page is rendered with its <img> tags removed (the summary's tints are pale)
    assert coloured_pixels(shot) > 0.007
    if os.environ.get("POLYALIGN_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["POLYALIGN_KEEP_SCREENSHOT"])


def test_fmt_keeps_three_significant_digits():
    from pipeline.html_report import fmt

    assert [fmt(v) for v in (3.135, 13.26, 198.84, 0.0579, -0.198, 22163.0, 0.0, None)] == \
        ["3.13", "13.3", "198.8", "0.0579", "-0.198", "22163", "0", "–"]


def test_delta_chart_shows_method_deltas_only():
    """Tokenizer target-vs-English rows and error shares have baselines but are not method deltas."""
    from pipeline.html_report import method_deltas

    rows = [row("nya", "language", "laft_eval", "bpb_target.laft", 2.9, baseline=3.1, higher_is_better=False),
            row("nya", "language", "laft_eval", "fertility_target", 2.4, baseline=1.3, higher_is_better=False),
            row("nya", "language", "laft_eval", "byte_fallback_share_target", 0.0, baseline=0.0),
            row("nya", "language", "mt_errors", "err.copy.en-xx.base", 0.1, baseline=0.0),
            row("nya", "language", "laft_eval", "bpb_target.base", 3.1)]
    assert [r["metric"] for r in method_deltas(rows)] == ["bpb_target.laft"]


def test_only_supported_verdicts_are_coloured_and_cells_say_n_needed():
    from pipeline.html_report import _html_table, cell, strongest_baseline_rows

    rows = _culture_comparisons("gr") + _rm_rows()
    page = _html_table([r for r in rows if r["pack"] == "gr"])
    assert page.count('class="worse"') == 1 and page.count('class="muted"') == 2 and 'class="better"' not in page
    assert cell(rows[2]) == "0.122 · Δ -0.078 [-0.2, 0.044] vs base · underpowered · n = 40 (9 documents), " \
                            "about 1489 needed"
    strongest = strongest_baseline_rows(rows)
    assert [(r["pack"], r["baseline_name"]) for r in strongest] == [("gr", "prior"), (SHARED, "length")]


def test_domain_correlations_pool_per_document_rows_not_packs():
    from pipeline.report import row
    from pipeline.scorecard import domain_correlations

    rows = [row(p, "language", "mt_errors", "domain_r.mono_train", r, ci=(r - 0.4, min(r + 0.4, 1)), n=n,
                higher_is_better=False, note="context")
            for p, r, n in (("nya", 0.5, 12), ("glg", 0.3, 20))]
    rows.append(row("npi", "language", "mt_errors", "domain_r.mono_train", None, n=6, higher_is_better=False,
                    note="not shown: 6 documents"))
    (c,) = domain_correlations(rows)
    assert c["packs"] == ["nya", "glg"] and c["n"] == 32 and 0.3 < c["r"] < 0.5 and c["ci_low"] < c["r"] < c["ci_high"]
