"""Stage outputs and scorecard rows (the docs/contracts.md contracts).

Each stage writes, atomically:
- `results/<pack>/<stage>.json`: flat numbers plus a `signature` string (DVC metrics);
- `results/<pack>/<stage>.rows.json`: its scorecard rows, with CIs, baselines and notes.
`scorecard@<pack>` gathers the rows; `compare` joins every pack's scorecard.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import io
from pipeline.paths import results_dir

ROW_KEYS = ("pack", "kind", "stage", "metric", "value", "ci_low", "ci_high", "baseline", "delta", "n",
            "higher_is_better")


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def row(pack: str, kind: str, stage: str, metric: str, value=None, *, ci=(None, None), baseline=None,
        n=None, higher_is_better: bool = True, note: str | None = None) -> dict:
    """One scorecard row. `value=None` needs a `note` saying why (never a made-up number)."""
    value, baseline = _num(value), _num(baseline)
    if value is None and not note:
        raise ValueError(f"{pack}/{stage}/{metric}: a null value needs a note")
    out = {"pack": pack, "kind": kind, "stage": stage, "metric": metric, "value": value,
           "ci_low": _num(ci[0]), "ci_high": _num(ci[1]), "baseline": baseline,
           "delta": None if value is None or baseline is None else value - baseline,
           "n": None if n is None else int(n), "higher_is_better": bool(higher_is_better)}
    if note:
        out["note"] = note
    return out


def flat_metrics(metrics: dict, signature: str) -> dict:
    """Numbers only (None/NaN dropped, bools as 0/1) plus the signature string."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value
    out["signature"] = signature
    return out


def stage_paths(pack: str, stage: str) -> tuple[Path, Path]:
    base = results_dir(pack)
    return base / f"{stage}.json", base / f"{stage}.rows.json"


def write_stage(pack: str, stage: str, metrics: dict, rows: list[dict], signature: str) -> None:
    """Write a stage's metrics and rows; rows first, so metrics mark completion."""
    metrics_path, rows_path = stage_paths(pack, stage)
    io.write_json(rows_path, rows)
    io.write_json(metrics_path, flat_metrics(metrics, signature))


LID_MIN_ACCURACY = 0.95  # docs/contracts.md: a language identifier under this gets a note


def lid_note(pack_id: str) -> str | None:
    """Note for language-fidelity / off-target rows when data@<pack> measured the identifier
    below LID_MIN_ACCURACY on held-out text (or has not measured it); None when it is sound."""
    path = results_dir(pack_id) / "data.json"
    acc = io.read_json(path).get("lid_accuracy") if path.exists() else None
    if acc is None:
        return "language identifier accuracy not measured (run data@<lang>): language rates unverified"
    if acc < LID_MIN_ACCURACY:
        return f"language identifier reaches only {acc:.2f} accuracy on held-out {pack_id}: language rates unreliable"
    return None
