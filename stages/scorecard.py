"""scorecard@<pack>: gather every stage's scorecard rows of one pack into reports/packs/<pack>.json.

Each stage writes results/<pack>/<stage>.rows.json through pipeline.report.write_stage.
This stage validates every row against the scorecard contract (pipeline/report.py, docs/contracts.md) and joins them;
a malformed row is a one-line error naming the file, the row and the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import io
from pipeline.errors import PolyalignError
from pipeline.packs import kind_of
from pipeline.paths import repo_root, results_dir

KIND = {"languages": "language", "cultures": "culture"}


class ScorecardRow(BaseModel):
    """One row of the scorecard contract; `note` is the only optional key."""

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

    @model_validator(mode="after")
    def _consistent(self):
        if self.value is None and not self.note:
            raise ValueError("value is null without a note saying why")
        finite = [x for x in (self.value, self.ci_low, self.ci_high, self.baseline, self.delta) if x is not None]
        if any(not math.isfinite(x) for x in finite):
            raise ValueError("numbers must be finite (use null plus a note)")
        expected = None if self.value is None or self.baseline is None else self.value - self.baseline
        if self.delta is not None and (expected is None or abs(self.delta - expected) > 1e-6 * (1 + abs(self.delta))):
            raise ValueError("delta must equal value - baseline")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError("ci_low and ci_high must both be set or both be null")
        if self.ci_low is not None and self.ci_low > self.ci_high:
            raise ValueError("ci_low above ci_high")
        return self


def validate_rows(rows, file: str | Path) -> list[dict]:
    """Validated rows as plain dicts (key order of the contract); PolyalignError on the first bad row."""
    if not isinstance(rows, list):
        raise PolyalignError(file, "(document)", "expected a list of scorecard rows", "write a JSON list")
    out = []
    for i, data in enumerate(rows):
        try:
            out.append(ScorecardRow.model_validate(data).model_dump(exclude_none=False))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            field = f"[{i}].{where}" if where else f"[{i}]"
            problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            raise PolyalignError(file, field, problem, "see the scorecard contract in DESIGN.md") from None
        if out[-1]["note"] is None:
            del out[-1]["note"]
    return out


def pack_scorecard_path(pack: str) -> Path:
    return repo_root() / "reports" / "packs" / f"{pack}.json"


def gather(pack: str) -> list[dict]:
    """Every row of results/<pack>/*.rows.json, validated, in stage-file order."""
    kind = KIND[kind_of(pack)]
    rows = []
    for file in sorted(results_dir(pack).glob("*.rows.json")):
        try:
            data = io.read_json(file)
        except ValueError as exc:
            raise PolyalignError(file, "(document)", f"invalid JSON: {exc}", "re-run the stage that wrote it") from None
        for i, item in enumerate(validate_rows(data, file)):
            for key, want in (("pack", pack), ("kind", kind)):
                if item[key] != want:
                    raise PolyalignError(file, f"[{i}].{key}", f"'{item[key]}' in the scorecard of {kind} pack "
                                         f"'{pack}'", f"use '{want}'")
            rows.append(item)
    return rows


def run(pack: str) -> None:
    io.write_json(pack_scorecard_path(pack), gather(pack))


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
