"""scorecard@<pack>: gather every stage's scorecard rows of one pack into reports/packs/<pack>.json.

Each stage writes results/<pack>/<stage>.rows.json through pipeline.report.write_stage.
This stage validates every row against the scorecard contract (pipeline/report.py, docs/contracts.md) and joins them;
a malformed row is a one-line error naming the file, the row and the field.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.errors import PolyalignError
from pipeline.packs import kind_of
from pipeline.paths import repo_root, results_dir
from pipeline.report import validate_rows

KIND = {"languages": "language", "cultures": "culture"}


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
