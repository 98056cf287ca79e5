"""scorecard@<pack> (and scorecard_shared, --pack _shared): gather every stage's scorecard rows of
one pack into reports/packs/<pack>.json.

Each stage writes results/<pack>/<stage>.rows.json through pipeline.report.write_stage; stages
that run once (rm_train, maft, culture_sft_all) write under results/_shared/. Every row is
validated against the scorecard contract (pipeline/report.py, docs/contracts.md); a malformed row
is a one-line error naming the file, the row and the field. The work is pipeline.scorecard's.
"""

from __future__ import annotations

from pipeline.report import validate_rows  # noqa: F401  (re-exported: the contract's validator)
from pipeline.scorecard import gather, pack_scorecard_path, write_pack_scorecard  # noqa: F401


def run(pack: str) -> None:
    write_pack_scorecard(pack)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
