"""Stage outputs and scorecard rows (the docs/contracts.md contracts).

Each stage writes, atomically:
- `results/<pack>/<stage>.json`: flat numbers plus a `signature` string (DVC metrics);
- `results/<pack>/<stage>.rows.json`: its scorecard rows, with CIs, baselines and notes.
`scorecard@<pack>` gathers the rows; `compare` joins every pack's scorecard.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import io, stats
from pipeline.errors import PolyalignError
from pipeline.paths import SHARED as SHARED  # re-exported: the scorecard modules name it report.SHARED
from pipeline.paths import results_dir

Verdict = Literal["better", "worse", "no difference shown", "underpowered"]
OPTIONAL = ("note", "baseline_name", "delta_ci_low", "delta_ci_high", "verdict", "mde", "n_needed", "n_docs", "machine")


class ScorecardRow(BaseModel):
    """One row of the scorecard contract (docs/contracts.md). Comparison rows (a system against a
    named baseline on the same items) also carry the paired interval of the delta and a verdict."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pack: str = Field(min_length=1)
    kind: Literal["language", "culture"]
    stage: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: float | None
    ci_low: float | None
    ci_high: float | None
    baseline: float | None
    delta: float | None
    n: int | None = Field(ge=0)
    higher_is_better: bool
    note: str | None = None
    baseline_name: str | None = None   # what `baseline` is: base, uniform, prior, copy-source, chance...
    delta_ci_low: float | None = None  # paired interval of `delta` (same items, documents resampled)
    delta_ci_high: float | None = None
    verdict: Verdict | None = None     # pipeline.stats.verdict of the paired interval against `mde`
    mde: float | None = Field(default=None, gt=0)      # minimal effect of interest (params stats.mde)
    n_needed: int | None = Field(default=None, ge=0)   # about how many items would decide it
    n_docs: int | None = Field(default=None, ge=0)     # documents (clusters) the n items come from
    machine: str | None = None  # provenance.hardware() of the run that made it, e.g. cpu:x86_64x2:avx512+bf16

    @model_validator(mode="after")
    def _consistent(self):
        if self.value is None and not self.note:
            raise ValueError("value is null without a note saying why")
        finite = [x for x in (self.value, self.ci_low, self.ci_high, self.baseline, self.delta,
                              self.delta_ci_low, self.delta_ci_high) if x is not None]
        if any(not math.isfinite(x) for x in finite):
            raise ValueError("numbers must be finite (use null plus a note)")
        expected = None if self.value is None or self.baseline is None else self.value - self.baseline
        if self.delta is not None and (expected is None or abs(self.delta - expected) > 1e-6 * (1 + abs(self.delta))):
            raise ValueError("delta must equal value - baseline")
        for lo, hi, name in ((self.ci_low, self.ci_high, "ci"), (self.delta_ci_low, self.delta_ci_high, "delta_ci")):
            if (lo is None) != (hi is None):
                raise ValueError(f"{name}_low and {name}_high must both be set or both be null")
            if lo is not None and lo > hi:
                raise ValueError(f"{name}_low above {name}_high")
        if self.delta_ci_low is not None and self.delta is not None and not (
                self.delta_ci_low - 1e-9 <= self.delta <= self.delta_ci_high + 1e-9):
            raise ValueError("delta lies outside its paired interval: compute both from the same statistic")
        if self.verdict is not None and (self.delta_ci_low is None or self.mde is None):
            raise ValueError("a verdict needs the paired interval (delta_ci_low/high) and mde")
        return self


def validate_rows(rows, file: str | Path) -> list[dict]:
    """Validated rows as plain dicts (key order of the contract); PolyalignError on the first bad row."""
    if not isinstance(rows, list):
        raise PolyalignError(file, "(document)", "expected a list of scorecard rows", "write a JSON list")
    out = []
    for i, data in enumerate(rows):
        try:
            item = ScorecardRow.model_validate(data).model_dump(exclude_none=False)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            field = f"[{i}].{where}" if where else f"[{i}]"
            problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            raise PolyalignError(file, field, problem, "see the scorecard contract in docs/contracts.md") from None
        out.append({k: v for k, v in item.items() if not (k in OPTIONAL and v is None)})
    return out


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


def comparison(pack: str, kind: str, stage: str, metric: str, value, baseline, *, delta_ci, n,
               baseline_name: str, mde: float | None = None, higher_is_better: bool = True,
               n_docs: int | None = None, ci=(None, None), note: str | None = None) -> dict:
    """A row comparing a system with a named baseline on the same items.

    delta_ci: (delta, low, high) from a paired pipeline.stats function (value - baseline);
    mde: the minimal effect of interest (default: params.yaml stats.mde for stage/metric).
    The row carries the verdict and about how many items would decide it; rows from fewer than
    stats.MIN_CLUSTERS documents say that their interval may under-cover (stats.coverage_note)."""
    note = "; ".join(x for x in (note, stats.coverage_note(n_docs)) if x) or None
    out = row(pack, kind, stage, metric, value, ci=ci, baseline=baseline, n=n,
              higher_is_better=higher_is_better, note=note)
    mde = mde_for(stage, metric) if mde is None else float(mde)
    _, lo, hi = (_num(x) for x in delta_ci)
    out |= {"baseline_name": baseline_name, "delta_ci_low": lo, "delta_ci_high": hi, "mde": mde,
            "verdict": stats.verdict(out["delta"], lo, hi, mde, higher_is_better),
            "n_needed": stats.n_needed(n, lo, hi, mde), "n_docs": None if n_docs is None else int(n_docs)}
    if out["verdict"] is None:
        out["delta_ci_low"] = out["delta_ci_high"] = None
    return out


def system_rows(pack: str, kind: str, stage: str, metric: str, scores: dict, *, baseline: str = "base",
                den: dict | None = None, clusters=None, higher_is_better: bool = True, mde: float | None = None,
                note: str | None = None, seed: int = 0) -> list[dict]:
    """Rows `<metric>.<system>` for every system in `scores`: the baseline system as a plain row with
    its interval, every other one as a comparison against it on the same items.

    scores: {system: per-item numbers [n]} (all paired, same items); den: {system: [n]} turns each
    score into sum(scores)/sum(den) (bits per byte); clusters: [n] documents, resampled whole.
    The delta is always value - baseline, named `delta` in the row (one name for every stage)."""
    n_docs = None if clusters is None else len(set(clusters))

    def interval(system):
        if den is None:
            return stats.cluster_bootstrap_ci(scores[system], clusters, seed=seed)
        return stats.cluster_ratio_ci(scores[system], den[system], clusters, seed=seed)

    def delta(system):
        if den is None:
            return stats.paired_delta(scores[system], scores[baseline], clusters, seed=seed)
        return stats.paired_ratio_delta(scores[system], den[system], scores[baseline], den[baseline], clusters,
                                        seed=seed)

    base = interval(baseline)
    n = len(scores[baseline])
    out = [row(pack, kind, stage, f"{metric}.{baseline}", base[0], ci=base[1:], n=n,
               higher_is_better=higher_is_better, note=note)]
    for system in (s for s in scores if s != baseline):
        est = interval(system)
        out.append(comparison(pack, kind, stage, f"{metric}.{system}", est[0], base[0], delta_ci=delta(system),
                              n=n, n_docs=n_docs, baseline_name=baseline, mde=mde, ci=est[1:],
                              higher_is_better=higher_is_better, note=note))
    return out


@lru_cache(maxsize=1)
def _mde_table() -> dict:
    from pipeline.config import section
    return section("stats").get("mde", {})


def mde_for(stage: str, metric: str) -> float:
    """The minimal effect of interest declared in params.yaml `stats.mde.<stage>` (a number, or a
    mapping of metric -> number with an optional `default`)."""
    entry = _mde_table().get(stage)
    if isinstance(entry, dict):
        entry = entry.get(metric, entry.get("default"))
    if entry is None:
        raise PolyalignError("params.yaml", f"stats.mde.{stage}", f"no minimal effect for metric '{metric}'",
                             f"add stats.mde.{stage}.{metric} (or .default)")
    return float(entry)


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
    from pipeline.config import settings_read

    # `settings`: every params section the stage read, resolved (profile and shared train applied)
    io.write_json(metrics_path, {**flat_metrics(metrics, signature), "settings": settings_read()})
    logging.getLogger("polyalign.report").info("wrote %s and %d scorecard rows", metrics_path.name, len(rows))


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
