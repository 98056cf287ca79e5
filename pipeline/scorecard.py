"""Gather, join and show the scorecard: the library behind scorecard@<pack>, compare and `polyalign compare`.

scorecard@<pack> validates every results/<pack>/*.rows.json against the contract
(pipeline/report.py, docs/contracts.md) into reports/packs/<pack>.json; stages that run once
(rm_train, maft, culture_sft_all) write under pack report.SHARED ("_shared") and keep the kind of
what they measure (language for rm_train and maft, culture for culture_sft_all), so the schema
needs no third kind. `compare` joins the enabled packs' scorecards and the shared one into
reports/scorecard.json, scorecard.md and index.html.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

from pipeline import io
from pipeline.config import enabled
from pipeline.errors import PolyalignError
from pipeline.mt_eval import COMET_NOT_COMPARABLE, pooled_correlation
from pipeline.paths import repo_root, results_dir
from pipeline.report import SHARED, validate_rows

KIND = {"languages": "language", "cultures": "culture"}


def reports_dir() -> Path:
    return repo_root() / "reports"


def pack_scorecard_path(pack: str) -> Path:
    return reports_dir() / "packs" / f"{pack}.json"


def _read_rows(file: Path) -> list[dict]:
    try:
        data = io.read_json(file)
    except ValueError as exc:
        raise PolyalignError(file, "(document)", f"invalid JSON: {exc}", "re-run the stage that wrote it") from None
    return validate_rows(data, file)


def gather(pack: str) -> list[dict]:
    """Every row of results/<pack>/*.rows.json, validated, in stage-file order; rows must name this
    pack and (for a language or culture pack) its kind."""
    if pack == SHARED:
        kind = None
    else:
        from pipeline.packs import kind_of
        kind = KIND[kind_of(pack)]
    rows = []
    for file in sorted(results_dir(pack).glob("*.rows.json")):
        machine = _machine(file.with_name(file.name.removesuffix(".rows.json") + ".json"))
        for i, item in enumerate(_read_rows(file)):
            for key, want in (("pack", pack), ("kind", kind)):
                if want is not None and item[key] != want:
                    raise PolyalignError(file, f"[{i}].{key}", f"'{item[key]}' in the scorecard of pack '{pack}'",
                                         f"use '{want}'")
            rows.append(item if machine is None or item.get("machine") else {**item, "machine": machine})
    return rows


def _machine(metrics_file: Path) -> str | None:
    """The `hw:` field of a stage's metrics signature (provenance.hardware()), or None."""
    if not metrics_file.exists():
        return None
    signature = str(io.read_json(metrics_file).get("signature", ""))
    return next((part[3:] for part in signature.split("|") if part.startswith("hw:")), None)


def write_pack_scorecard(pack: str) -> None:
    io.write_json(pack_scorecard_path(pack), gather(pack))


def enabled_packs() -> list[str]:
    return enabled("languages") + enabled("cultures")


def load_pack_rows(packs: list[str]) -> list[dict]:
    """Validated rows of every pack's scorecard, then the shared one's (reports/packs/_shared.json);
    a missing scorecard says which stage to run."""
    rows = []
    for pack in [*packs, SHARED]:
        path = pack_scorecard_path(pack)
        if not path.exists():
            stage = "scorecard_shared" if pack == SHARED else f"scorecard@{pack}"
            raise PolyalignError(path, "(file)", f"no scorecard for pack '{pack}'", f"run `dvc repro {stage}`")
        rows += validate_rows(io.read_json(path), path)
    return rows


def with_comet_note(r: dict) -> dict:
    """COMET rows always say that raw COMET does not compare across languages."""
    if not r["metric"].startswith("comet") or COMET_NOT_COMPARABLE in (r.get("note") or ""):
        return r
    note = f"{r['note']}; {COMET_NOT_COMPARABLE}" if r.get("note") else COMET_NOT_COMPARABLE
    return {**r, "note": note}


def domain_correlations(rows: list[dict]) -> list[dict]:
    """Per corpus, the packs' per-document correlations (mt_errors `domain_r.<corpus>` rows: JSD of
    the corpus to each test document vs the trained system's chrF++ gain there, Khiu et al.) pooled
    by Fisher z, with an interval. A correlation across a handful of packs is never computed: with
    3 packs it has no interval worth the name, and packs differ in more than their corpora."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["stage"] == "mt_errors" and r["metric"].startswith("domain_r.") and r["value"] is not None:
            groups.setdefault(r["metric"].removeprefix("domain_r."), []).append(r)
    out = []
    for corpus, parts in sorted(groups.items()):
        pooled = pooled_correlation([_fisher_part(r["value"], r["n"]) for r in parts])
        out.append({"corpus": corpus, "packs": [r["pack"] for r in parts], "n": pooled["n"],
                    "r": pooled["r"], "ci_low": pooled["ci_low"], "ci_high": pooled["ci_high"]})
    return out


def gains(rows: list[dict]) -> list[dict]:
    """reports/plots/gains.json, the per-pack comparison chart of `dvc plots show`: each method's
    delta over the pack's own baseline, sign flipped where lower is better (the report's delta chart)."""
    from pipeline.html_report import method_deltas

    return [{"comparison": f"{r['pack']} / {r['stage']} / {r['metric']}", "pack": r["pack"], "stage": r["stage"],
             "metric": r["metric"], "gain": r["delta"] if r["higher_is_better"] else -r["delta"],
             "verdict": r.get("verdict")} for r in method_deltas(rows)]


def _fisher_part(r: float, n: int) -> dict:
    """One pack's correlation as pooled_correlation takes it (Fisher z and its standard error)."""
    return {"z": math.atanh(max(min(r, 0.999999), -0.999999)), "se": 1 / math.sqrt(n - 3), "n": n}


def write_reports() -> None:
    """reports/scorecard.json, domain_similarity.json, scorecard.md and index.html from every scorecard."""
    from pipeline.html_report import render_html, render_markdown

    packs = enabled_packs()
    rows = [with_comet_note(r) for r in load_pack_rows(packs)]
    correlations = domain_correlations(rows)
    out = reports_dir()
    io.write_json(out / "scorecard.json", rows)
    io.write_json(out / "domain_similarity.json", correlations)
    io.write_json(out / "plots" / "gains.json", gains(rows))
    io.write_text(out / "scorecard.md", render_markdown(rows, correlations, packs))
    io.write_text(out / "index.html", render_html(rows, correlations, packs))


# --------------------------------------------------------------------------- CLI
def select(rows: list[dict], pack: str | None = None, stage: str | None = None,
           metric: str | None = None) -> list[dict]:
    """Rows matching the filters: pack and stage exactly (comma lists allowed), metric as a glob or substring."""
    def keep(value: str, wanted: str | None, glob: bool = False) -> bool:
        if not wanted:
            return True
        choices = [w.strip() for w in wanted.split(",")]
        if glob:
            return any(fnmatch.fnmatchcase(value, w) if any(c in w for c in "*?[") else w in value for w in choices)
        return value in choices

    return [r for r in rows if keep(r["pack"], pack) and keep(r["stage"], stage) and keep(r["metric"], metric, True)]


def compare_cli(pack: str | None = None, stage: str | None = None, metric: str | None = None) -> list[dict]:
    """Print reports/scorecard.json as a rich table, filtered; notes as numbered footnotes. Returns the rows shown."""
    from rich.console import Console
    from rich.markup import escape

    path = reports_dir() / "scorecard.json"
    if not path.exists():
        raise PolyalignError(path, "(file)", "no scorecard yet", "run `dvc repro compare`")
    rows = select(validate_rows(io.read_json(path), path), pack, stage, metric)
    console = Console()
    if not rows:
        console.print("no rows match the filters")
        return rows
    table, notes = _rich_table(rows)
    console.print(table)
    for note, i in notes.items():
        console.print(f"[{i}] {escape(note)}", highlight=False)
    return rows


def _rich_table(rows: list[dict]):
    """(rich Table, {note: footnote number}) of the rows: value, CI, delta against the named baseline
    with its paired interval, verdict and n."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from pipeline.html_report import delta_text, fmt, n_text, notes_index

    notes = notes_index(rows)
    table = Table(title=f"polyalign scorecard ({len(rows)} rows)", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("pack", "stage", "metric", "value", "95% CI", "Δ vs baseline [paired 95% CI]", "verdict", "n",
                 "note"):
        table.add_column(name, justify="left" if name in ("pack", "stage", "metric", "verdict") else "right")
    for r in rows:
        ci = "" if r["ci_low"] is None else f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
        value = fmt(r["value"]) if r["value"] is not None else "[dim]n/a[/dim]"
        arrow = "↑" if r["higher_is_better"] else "↓"
        table.add_row(escape(r["pack"]), escape(r["stage"]), escape(f"{r['metric']} {arrow}"), value, escape(ci),
                      escape(delta_text(r)), r.get("verdict") or "", escape(n_text(r)),
                      f"[{notes[r['note']]}]" if r.get("note") else "")
    return table, notes
