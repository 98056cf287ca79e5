"""compare: join the enabled packs' scorecards into the cross-lingual / cross-cultural report.

Reads reports/packs/<pack>.json of every enabled language and culture pack (params.yaml)
and writes reports/scorecard.json (the docs/contracts.md contract: a list of rows),
reports/scorecard.md and reports/index.html (tables and plots). Every COMET row carries
the note that raw COMET scores are not comparable across languages. Across language
packs, the domain divergence of each adaptation corpus is correlated with chrF++.
`compare_cli` is `polyalign compare`: the table in the terminal, filtered.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from pipeline import io
from pipeline.config import enabled
from pipeline.errors import PolyalignError
from pipeline.html_report import domain_points, method_deltas, render_html, render_markdown
from pipeline.mt_eval import COMET_NOT_COMPARABLE, pearson, spearman
from pipeline.paths import repo_root
from stages.scorecard import pack_scorecard_path, validate_rows


def reports_dir() -> Path:
    return repo_root() / "reports"


def enabled_packs() -> list[str]:
    return enabled("languages") + enabled("cultures")


def load_pack_rows(packs: list[str]) -> list[dict]:
    """Validated rows of every pack's scorecard; a missing scorecard says which stage to run."""
    rows = []
    for pack in packs:
        path = pack_scorecard_path(pack)
        if not path.exists():
            raise PolyalignError(path, "(file)", f"no scorecard for enabled pack '{pack}'",
                                 f"run `dvc repro scorecard@{pack}`")
        rows += validate_rows(io.read_json(path), path)
    return rows


def with_comet_note(r: dict) -> dict:
    """COMET rows always say that raw COMET does not compare across languages."""
    if not r["metric"].startswith("comet") or COMET_NOT_COMPARABLE in (r.get("note") or ""):
        return r
    note = f"{r['note']}; {COMET_NOT_COMPARABLE}" if r.get("note") else COMET_NOT_COMPARABLE
    return {**r, "note": note}


def domain_correlations(rows: list[dict]) -> list[dict]:
    """Pearson and Spearman of JSD(corpus, test) vs chrF++ en→xx across packs, per corpus and system."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for pt in domain_points(rows):
        groups.setdefault((pt["corpus"], pt["system"]), []).append(pt)
    out = []
    for (corpus, system), pts in sorted(groups.items()):
        x, y = [p["jsd"] for p in pts], [p["chrf"] for p in pts]
        out.append({"corpus": corpus, "system": system, "n": len(pts), "packs": [p["pack"] for p in pts],
                    "pearson": pearson(x, y), "spearman": spearman(x, y)})
    return out


def gains(rows: list[dict]) -> list[dict]:
    """reports/plots/gains.json, the per-pack comparison chart of `dvc plots show`: each method's
    delta over the pack's own baseline, sign flipped where lower is better (the report's delta chart)."""
    return [{"comparison": f"{r['pack']} / {r['stage']} / {r['metric']}", "pack": r["pack"], "stage": r["stage"],
             "metric": r["metric"], "gain": r["delta"] if r["higher_is_better"] else -r["delta"],
             "verdict": r.get("verdict")} for r in method_deltas(rows)]


def run() -> None:
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
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pipeline.html_report import fmt, notes_index

    path = reports_dir() / "scorecard.json"
    if not path.exists():
        raise PolyalignError(path, "(file)", "no scorecard yet", "run `dvc repro compare`")
    rows = select(validate_rows(io.read_json(path), path), pack, stage, metric)
    console = Console()
    if not rows:
        console.print("no rows match the filters")
        return rows
    notes = notes_index(rows)
    table = Table(title=f"polyalign scorecard ({len(rows)} rows)", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("pack", "stage", "metric", "value", "95% CI", "Δ baseline", "n", "note"):
        table.add_column(name, justify="left" if name in ("pack", "stage", "metric") else "right")
    for r in rows:
        ci = "" if r["ci_low"] is None else f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
        delta = "" if r["delta"] is None else f"{'+' if r['delta'] >= 0 else ''}{fmt(r['delta'])}"
        value = fmt(r["value"]) if r["value"] is not None else "[dim]n/a[/dim]"
        arrow = "↑" if r["higher_is_better"] else "↓"
        table.add_row(escape(r["pack"]), escape(r["stage"]), escape(f"{r['metric']} {arrow}"), value, escape(ci),
                      delta, "" if r["n"] is None else str(r["n"]), f"[{notes[r['note']]}]" if r.get("note") else "")
    console.print(table)
    for note, i in notes.items():
        console.print(f"[{i}] {escape(note)}", highlight=False)
    return rows


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
