"""Render the cross-lingual scorecard as Markdown and as a self-contained HTML page with plots.

Input is the scorecard contract (a list of rows, docs/contracts.md) plus the domain-similarity
correlations computed by `compare`. Plots are matplotlib PNGs embedded as data URIs, so
reports/index.html opens anywhere, offline, as one file. Tables pivot each stage to
metric x pack: metric names of per-language stages use `xx` for the language (e.g.
`chrf++.en-xx.base`), so one row of the table compares the languages. Comparison rows show the
delta with its paired interval, the named baseline, the verdict and "n = 12 (8 documents), about N
needed" when underpowered; only better/worse are coloured. A summary on top says, per method, whether
it beats its strongest trivial baseline and which comparisons the profile is too small to decide.
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
import re
from collections import defaultdict
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, never need a display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.laft import TOKENIZER_METRICS  # noqa: E402
from pipeline.mt_eval import ERROR_DOC, ERROR_TYPES  # noqa: E402
from pipeline.report import SHARED  # noqa: E402

MAX_PANELS = 12  # small multiples per stage: beyond 12 panels a reader scrolls past them
MAX_DELTA_BARS = 40
# rows with a baseline that is not a method's: error shares (their own chart) and the tokenizer's
# target-vs-English figures (fertility etc.), whose differences dwarf every method's delta
NOT_METHOD_DELTAS = ("err.", *(f"{m}_" for m in TOKENIZER_METRICS))
ERROR_COLOURS = dict(zip(ERROR_TYPES, plt.get_cmap("tab10").colors))
HUMAN_NOTE = ("System 'human' is the reference translation run through the same detectors: its shares "
              "(mostly the language identifier's own misses) are the floor under every system's.")


# --------------------------------------------------------------------------- formatting
def fmt(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits, at least one decimal below 1000 (3.135 -> 3.13, 13.26 -> 13.3,
    198.8 -> 198.8, 0.0579 -> 0.0579, 22163 -> 22163): bits per byte keep their signal."""
    if x is None:
        return "–"
    if x == 0 or abs(x) < 1:
        return f"{x:.{digits}g}"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.{max(1, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"


def signed(x: float) -> str:
    return f"{'+' if x >= 0 else ''}{fmt(x)}"


def delta_text(r: dict) -> str:
    """'Δ +1.2 [-0.3, 2.7] vs uniform': the delta, its paired interval and what it is against."""
    if r["delta"] is None:
        return ""
    out = f"Δ {signed(r['delta'])}"
    if r.get("delta_ci_low") is not None:
        out += f" [{fmt(r['delta_ci_low'])}, {fmt(r['delta_ci_high'])}]"
    return out + (f" vs {r['baseline_name']}" if r.get("baseline_name") else "")


def n_text(r: dict) -> str:
    """'n = 12 (8 documents)', plus ', about 40 needed' when the comparison is underpowered."""
    if r["n"] is None:
        return ""
    out = f"n = {r['n']}" + (f" ({r['n_docs']} documents)" if r.get("n_docs") is not None else "")
    if r.get("verdict") == "underpowered" and r.get("n_needed"):
        out += f", about {r['n_needed']} needed"
    return out


def cell(r: dict) -> str:
    """'value [lo, hi] · Δ +d [lo, hi] vs base · verdict · n = 12 (8 documents), about N needed';
    'n/a' for a null value. Plain rows with a baseline show 'value [lo, hi] (Δ +d)'."""
    if r["value"] is None:
        return "n/a"
    out = fmt(r["value"])
    if r["ci_low"] is not None:
        out += f" [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
    if not r.get("baseline_name"):
        return out + (f" (Δ {signed(r['delta'])})" if r["delta"] is not None else "")
    parts = [out, delta_text(r), r.get("verdict") or "no paired interval", n_text(r)]
    return " · ".join(p for p in parts if p)


# --------------------------------------------------------------------------- verdict summary
# Baselines that need no method (issue 12 item 4): a method that does not beat the best-scoring of
# these on its metric is reported as not beating it. Matched on the start of baseline_name.
TRIVIAL_BASELINES = ("uniform", "prior", "copy-source", "length", "chance", "base", "apertium", "reference",
                     "random")
SUPPORTED = ("better", "worse")


def is_trivial(name: str | None) -> bool:
    return bool(name) and name.lower().startswith(TRIVIAL_BASELINES)


def method_key(r: dict) -> tuple[str, str, str]:
    """(pack, stage, metric without its '.vs_<baseline>' / '_vs_<baseline>' suffix): one method's
    score, whichever baseline a row compares it with."""
    return r["pack"], r["stage"], re.sub(r"[._]vs[._].*$", "", r["metric"])


def strongest_baseline_rows(rows: Iterable[dict]) -> list[dict]:
    """Per method, its comparison row against the best-scoring trivial baseline (first seen wins ties)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r.get("verdict") is None or not is_trivial(r.get("baseline_name")) or r["baseline"] is None:
            continue
        key, sign = method_key(r), 1 if r["higher_is_better"] else -1
        if key not in best or sign * r["baseline"] > sign * best[key]["baseline"]:
            best[key] = r
    return list(best.values())


def beats_text(r: dict) -> str:
    """Plain words: 'nya · mt_errors · chrf++.en-xx.laft: does not beat the copy-source baseline (...)'."""
    pack, stage, method = method_key(r)
    beats = r["verdict"] == "better"
    why = r["verdict"] if r["verdict"] != "underpowered" else f"underpowered: {n_text(r)}"
    return (f"{pack} · {stage} · {method}: {'beats' if beats else 'does not beat'} the {r['baseline_name']} "
            f"baseline ({why}; {delta_text(r)})")


def underpowered_text(r: dict) -> str:
    return f"{r['pack']} · {r['stage']} · {r['metric']} vs {r['baseline_name']}: {n_text(r)}"


def summary(rows: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(verdict, plain-words line)] per method against its strongest trivial baseline,
    [line per underpowered comparison]) for the top of the report."""
    beats = [(r["verdict"], beats_text(r)) for r in strongest_baseline_rows(rows)]
    return beats, [underpowered_text(r) for r in rows if r.get("verdict") == "underpowered"]


def pivot(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    """(metrics, packs, {(metric, pack): row}) in first-seen order."""
    metrics, packs, table = [], [], {}
    for r in rows:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
        if r["pack"] not in packs:
            packs.append(r["pack"])
        table[(r["metric"], r["pack"])] = r
    return metrics, packs, table


def by_stage(rows: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(kind, stage): rows}, kinds languages first."""
    out = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["kind"] != "language"):
        out[(r["kind"], r["stage"])].append(r)
    return dict(out)


def notes_index(rows: list[dict]) -> dict[str, int]:
    """Distinct notes numbered in first-seen order (footnotes)."""
    out: dict[str, int] = {}
    for r in rows:
        if r.get("note") and r["note"] not in out:
            out[r["note"]] = len(out) + 1
    return out


def direction(r: dict) -> str:
    return "↑ better" if r["higher_is_better"] else "↓ better"


# --------------------------------------------------------------------------- markdown
def machines_text(rows: list[dict]) -> str:
    """Which machines made these rows (each row's `machine`), and what differs between kinds."""
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    if not machines:
        return "Machine: not recorded."
    return (f"Machine{'s' if len(machines) > 1 else ''}: {', '.join(machines)}. '+bf16' marks a CPU with bf16 matrix "
            "units (AVX512-BF16/AMX): it trains in bf16 autocast where others train in fp32 (train.mixed_precision: "
            "auto), so losses and scores differ in their last digits and times differ several-fold between the two."
            + (" '-capped' marks a run held below its CPU's instruction set (another kind's code paths on that machine)."
               if any(m.endswith("-capped") for m in machines) else ""))


def render_markdown(rows: list[dict], correlations: list[dict], packs: list[str]) -> str:
    lines = ["# polyalign scorecard", "",
             f"Packs: {', '.join(packs)} (and {SHARED}: stages that run once). Each cell: value [95% CI]; "
             "comparison rows add Δ [paired 95% CI] vs the named baseline, the verdict and n (see "
             "README, 'Reading a verdict'); n/a = could not run (see the note). Numbers in one row compare "
             "languages only where the metric allows it (see notes).", ""]
    lines += [machines_text(rows), ""]
    lines += _md_summary(rows)
    empty = [p for p in packs if not any(r["pack"] == p for r in rows)]
    if empty:
        lines += [f"No rows yet from: {', '.join(empty)}.", ""]
    for (kind, stage), srows in by_stage(rows).items():
        lines += _md_stage(kind, stage, srows)
    lines += _md_correlations(correlations)
    lines += ["## Error taxonomy (mt_errors)", ""]
    lines += [f"- **{name}**: {ERROR_DOC[name]}" for name in ERROR_TYPES]
    lines += ["- err.<type> rows are primary shares: each sentence counts once, under its first error in "
              "the order above, so the shares add up to err.any.",
              f"- {HUMAN_NOTE}", ""]
    return "\n".join(lines)


def _md_summary(rows: list[dict]) -> list[str]:
    beats, under = summary(rows)
    out = ["## Summary: each method against its strongest trivial baseline", ""]
    out += [f"- {'**' + line + '**' if v in SUPPORTED else line}" for v, line in beats] or ["- no comparison rows yet"]
    out += ["", "## Too small to decide (underpowered at this profile's size)", ""]
    out += [f"- {line}" for line in under] or ["- none"]
    return out + [""]


def _md_stage(kind: str, stage: str, rows: list[dict]) -> list[str]:
    metrics, packs, table = pivot(rows)
    notes = notes_index(rows)
    out = [f"## {stage} ({kind})", "", "| metric | | " + " | ".join(packs) + " |",
           "|---|---|" + "---|" * len(packs)]
    for m in metrics:
        cells = []
        for p in packs:
            r = table.get((m, p))
            text = "" if r is None else cell(r)
            if r is not None and r.get("note"):
                text += f" [^{stage}-{notes[r['note']]}]"
            cells.append(text.replace("|", "\\|"))
        first = next(table[(m, p)] for p in packs if (m, p) in table)
        out.append(f"| {m} | {direction(first)} | " + " | ".join(cells) + " |")
    out.append("")
    out += [f"[^{stage}-{i}]: {note}" for note, i in notes.items()]
    return out + [""]


DOMAIN_TEXT = ("Khiu et al. (2024): within each pack, Jensen–Shannon divergence between an adaptation corpus "
               "and each NTREX test document against the chrF++ gain (en→xx) of the system trained on that "
               "corpus over base on that document; packs' correlations pooled by Fisher z (fixed effect), "
               "none over fewer than 10 documents. Context, not a method's gain.")


def _md_correlations(correlations: list[dict]) -> list[str]:
    if not correlations:
        return []
    out = ["## Domain similarity and translation quality", "", DOMAIN_TEXT, "",
           "| corpus | packs | documents | pooled Pearson r [95% CI] |", "|---|---|---|---|"]
    for c in correlations:
        out.append(f"| {c['corpus']} | {', '.join(c['packs'])} | {c['n']} | {fmt(c['r'])} "
                   f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}] |")
    return out + [""]


# --------------------------------------------------------------------------- plots
def _png(fig) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)   # every figure is tight_layout()-ed: "tight" would draw it twice
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def headline_metrics(rows: list[dict]) -> list[str]:
    """Metrics worth a panel: chrF++ for mt_errors (errors have their own plot), else all; at most MAX_PANELS."""
    metrics, _, _ = pivot([r for r in rows if r["value"] is not None])
    if any(m.startswith("chrf++") for m in metrics):
        metrics = [m for m in metrics if m.startswith("chrf++")]
    metrics = [m for m in metrics if not m.startswith(("err.", "jsd."))] or metrics
    return metrics[:MAX_PANELS]


def plot_metric_panels(stage: str, rows: list[dict]) -> str | None:
    """Small multiples: one panel per metric, one point per pack with its 95% CI."""
    metrics = headline_metrics(rows)
    if not metrics:
        return None
    _, packs, table = pivot(rows)
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        xs, ys, lo, hi, base = [], [], [], [], []
        for i, p in enumerate(packs):
            r = table.get((m, p))
            if r is None or r["value"] is None:
                continue
            xs.append(i), ys.append(r["value"]), base.append(r["baseline"])
            lo.append(r["value"] - r["ci_low"] if r["ci_low"] is not None else 0)
            hi.append(r["ci_high"] - r["value"] if r["ci_high"] is not None else 0)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color="tab:blue", capsize=4, label="value, 95% CI")
        bx = [x for x, b in zip(xs, base) if b is not None]
        ax.scatter(bx, [b for b in base if b is not None], marker="_", s=300, color="tab:red", label="baseline")
        ax.set_xticks(range(len(packs)), packs)
        ax.set_xlim(-0.5, len(packs) - 0.5)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{stage}: per-pack metrics with 95% CIs (red: the pack's own baseline)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def method_deltas(rows: Iterable[dict]) -> list[dict]:
    """Rows whose delta is a method against its baseline (what the delta chart shows)."""
    return [r for r in rows if r["delta"] is not None and not r["metric"].startswith(NOT_METHOD_DELTAS)]


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}   # every other verdict is grey


def plot_deltas(rows: list[dict]) -> str | None:
    """Improvement over each row's baseline (sign flipped where lower is better) with its paired 95%
    interval, one panel per stage; only supported verdicts (better/worse) are coloured.

    Stages have their own units (bits per byte, chrF points, accuracy), so each panel gets its own axis.
    """
    rows = method_deltas(rows)[:MAX_DELTA_BARS]
    if not rows:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    sizes = [sum(r["stage"] == st for r in rows) for st in stages]
    fig, axes = plt.subplots(len(stages), 1, figsize=(8, 0.3 * sum(sizes) + 1.1 * len(stages)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for ax, st in zip(axes.flat, stages):
        _delta_panel(ax, [r for r in rows if r["stage"] == st])
        ax.set_title(st, fontsize=9, loc="left")
    axes.flat[-1].set_xlabel("improvement over the row's baseline, paired 95% CI (metric units; sign flipped "
                             "where lower is better); green/red: interval excludes 0")
    fig.tight_layout()
    return _png(fig)


def _delta_panel(ax, part: list[dict]) -> None:
    sign = [1 if r["higher_is_better"] else -1 for r in part]
    gains = [s * r["delta"] for s, r in zip(sign, part)]
    colours = [VERDICT_COLOURS.get(r.get("verdict"), "tab:gray") for r in part]
    ax.barh(range(len(part)), gains, color=colours)
    for i, (s, r) in enumerate(zip(sign, part)):
        if r.get("delta_ci_low") is not None:
            lo, hi = sorted((s * r["delta_ci_low"], s * r["delta_ci_high"]))
            ax.plot([lo, hi], [i, i], color="black", lw=1)
    labels = [f"{r['pack']} · {r['metric']}" + (f" vs {r['baseline_name']}" if r.get("baseline_name") else "")
              for r in part]
    ax.set_yticks(range(len(part)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.grid(axis="x", alpha=0.3)


def error_shares(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{direction: {'pack · system': {error type: primary share}}} from err.<type>.<dir>.<system> rows."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        parts = r["metric"].split(".", 3)
        if r["stage"] != "mt_errors" or parts[0] != "err" or len(parts) != 4 or parts[1] not in ERROR_TYPES:
            continue
        if r["value"] is not None:
            out[parts[2]][f"{r['pack']} · {parts[3]}"][parts[1]] = r["value"]
    return out


def plot_error_bars(rows: list[dict]) -> str | None:
    """Stacked bars of primary error shares per pack and system, one panel per direction."""
    shares = error_shares(rows)
    if not shares:
        return None
    dirs = sorted(shares)
    width = max(len(v) for v in shares.values())
    fig, axes = plt.subplots(1, len(dirs), figsize=(max(5, 0.55 * width + 2) * len(dirs), 4.2), squeeze=False)
    for ax, d in zip(axes.flat, dirs):
        bars = sorted(shares[d])
        bottom = [0.0] * len(bars)
        for name in ERROR_TYPES:
            vals = [shares[d][b].get(name, 0.0) for b in bars]
            ax.bar(range(len(bars)), vals, bottom=bottom, color=ERROR_COLOURS[name], label=name)
            bottom = [a + v for a, v in zip(bottom, vals)]
        ax.set_xticks(range(len(bars)), bars, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of test sentences")
        ax.set_title(d.replace("xx", "language"), fontsize=9)
    axes.flat[-1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title="primary error")
    fig.suptitle("Translation errors: each sentence counted once, under its first error type", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def domain_points(rows: list[dict]) -> list[dict]:
    """(pack, corpus, jsd, system, chrF++ en→xx) for every pair a pack has."""
    jsd = {(r["pack"], r["metric"].removeprefix("jsd.")): r for r in rows
           if r["stage"] == "mt_errors" and r["metric"].startswith("jsd.") and r["value"] is not None}
    chrf = {(r["pack"], r["metric"].split(".", 2)[2]): r["value"] for r in rows
            if r["stage"] == "mt_errors" and r["metric"].startswith("chrf++.en-xx.") and r["value"] is not None}
    return [{"pack": p, "corpus": c, "jsd": j["value"], "jsd_ci": (j["ci_low"], j["ci_high"]), "system": s,
             "chrf": v} for (p, c), j in jsd.items() for (p2, s), v in chrf.items() if p2 == p]


def plot_domain_scatter(rows: list[dict]) -> str | None:
    points = domain_points(rows)
    if not points:
        return None
    corpora = sorted({pt["corpus"] for pt in points})
    systems = sorted({pt["system"] for pt in points})
    packs = sorted({pt["pack"] for pt in points})
    markers = dict(zip(systems, "osD^v<>p*hX"))
    colours = dict(zip(packs, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, len(corpora), figsize=(4 * len(corpora), 3.6), squeeze=False, sharey=True)
    for ax, corpus in zip(axes.flat, corpora):
        for pt in (p for p in points if p["corpus"] == corpus):
            ax.scatter(pt["jsd"], pt["chrf"], marker=markers[pt["system"]], color=colours[pt["pack"]], s=40)
            ax.annotate(pt["pack"], (pt["jsd"], pt["chrf"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"corpus: {corpus}", fontsize=9)
        ax.set_xlabel("JSD to the test set (bits, lower = closer)")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("chrF++ en→xx")
    handles = [plt.Line2D([], [], marker=markers[s], ls="", color="grey", label=s) for s in systems]
    axes.flat[-1].legend(handles=handles, fontsize=7, title="system", loc="best")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- html
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th:first-child,td:first-child{text-align:left}td.na{color:#999}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}.notes{font-size:12px;color:#555}details{margin:.5em 0}h2{margin-top:1.6em}
td.better,li.better{background:#c8ecc8}td.worse,li.worse{background:#f6c6c6}td.muted,li.muted{color:#888}
ul.summary li{margin:2px 0;padding:1px 4px}"""


def verdict_class(r: dict) -> str:
    """CSS class: colour only supported verdicts; grey 'no difference shown' and 'underpowered'."""
    v = r.get("verdict")
    return v if v in SUPPORTED else "muted" if v else ""


def _img(b64: str | None, alt: str) -> str:
    return "" if b64 is None else f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></figure>'


def _html_table(rows: list[dict]) -> str:
    metrics, packs, table = pivot(rows)
    notes = notes_index(rows)
    head = "<tr><th>metric</th><th></th>" + "".join(f"<th>{html.escape(p)}</th>" for p in packs) + "</tr>"
    body = []
    for m in metrics:
        tds = []
        for p in packs:
            r = table.get((m, p))
            if r is None:
                tds.append("<td></td>")
                continue
            mark = f" <sup>{notes[r['note']]}</sup>" if r.get("note") else ""
            cls = "na" if r["value"] is None else verdict_class(r)
            cls = f' class="{cls}"' if cls else ""
            tds.append(f"<td{cls}>{html.escape(cell(r))}{mark}</td>")
        first = next(table[(m, p)] for p in packs if (m, p) in table)
        body.append(f"<tr><td>{html.escape(m)}</td><td>{direction(first)}</td>{''.join(tds)}</tr>")
    foot = "".join(f"<li value='{i}'>{html.escape(n)}</li>" for n, i in notes.items())
    return f"<table>{head}{''.join(body)}</table>" + (f"<ol class='notes'>{foot}</ol>" if foot else "")


def render_html(rows: list[dict], correlations: list[dict], packs: list[str]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>polyalign scorecard</title>"
             f"<style>{CSS}</style></head><body><h1>polyalign scorecard</h1>",
             f"<p>Packs: {html.escape(', '.join(packs))} (and {SHARED}: stages that run once). Cells: value "
             "[95% CI]; comparison rows add Δ [paired 95% CI] vs the named baseline, the verdict and n. Only "
             "supported verdicts are coloured (green better, red worse); 'no difference shown' and "
             "'underpowered' are grey. n/a = could not run, the footnote says why.</p>"]
    parts.append(f"<p>{html.escape(machines_text(rows))}</p>")
    empty = [p for p in packs if not any(r["pack"] == p for r in rows)]
    if empty:
        parts.append(f"<p>No rows yet from: {html.escape(', '.join(empty))}.</p>")
    parts.append(_html_summary(rows))
    languages = [r for r in rows if r["kind"] == "language"]
    parts.append("<h2>Method deltas against their baselines</h2>" + (_img(plot_deltas(rows), "deltas") or
                                                                       "<p>No row has a baseline yet.</p>"))
    if any(r["stage"] == "mt_errors" for r in languages):
        parts.append("<h2>Translation errors</h2>" + _img(plot_error_bars(languages), "error types"))
        parts.append("<ul class='notes'>" + "".join(f"<li><b>{n}</b>: {html.escape(ERROR_DOC[n])}</li>"
                                                       for n in ERROR_TYPES) + f"</ul><p>{html.escape(HUMAN_NOTE)}</p>")
        parts.append("<h2>Domain similarity and chrF++</h2>" + _img(plot_domain_scatter(languages), "domain scatter"))
        parts.append(_html_correlations(correlations))
    for (kind, stage), srows in by_stage(rows).items():
        parts.append(f"<h2>{html.escape(stage)} ({kind})</h2>")
        parts.append(_img(plot_metric_panels(stage, srows), f"{stage} metrics"))
        parts.append(f"<details open><summary>table ({len(srows)} rows)</summary>{_html_table(srows)}</details>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _html_summary(rows: list[dict]) -> str:
    beats, under = summary(rows)
    items = "".join(f"<li class='{v if v in SUPPORTED else 'muted'}'>{html.escape(line)}</li>" for v, line in beats)
    out = ("<h2>Summary: each method against its strongest trivial baseline</h2>"
           + (f"<ul class='summary'>{items}</ul>" if items else "<p>No comparison rows yet.</p>"))
    low = "".join(f"<li>{html.escape(line)}</li>" for line in under)
    return out + ("<h3>Too small to decide at this profile's size (underpowered)</h3>"
                  + (f"<ul class='summary muted'>{low}</ul>" if low else "<p>None.</p>"))


def _html_correlations(correlations: list[dict]) -> str:
    if not correlations:
        return ("<p>No pack has per-document correlations over at least 10 documents with a system trained "
                "on the corpus beside base: nothing to pool.</p>")
    rows = "".join(f"<tr><td>{html.escape(c['corpus'])}</td><td>{html.escape(', '.join(c['packs']))}</td>"
                   f"<td>{c['n']}</td><td>{fmt(c['r'])} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]</td></tr>"
                   for c in correlations)
    return (f"<p>{html.escape(DOMAIN_TEXT)}</p><table><tr><th>corpus</th><th>packs</th><th>documents</th>"
            f"<th>pooled Pearson r [95% CI]</th></tr>{rows}</table>")
