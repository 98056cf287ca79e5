"""compare: join the enabled packs' scorecards and the shared one into the cross-lingual /
cross-cultural report.

Reads reports/packs/<pack>.json of every enabled language and culture pack (params.yaml) plus
reports/packs/_shared.json (rm_train, maft, culture_sft_all) and writes reports/scorecard.json (the
contract: a list of rows), reports/scorecard.md and reports/index.html (a summary of verdicts
against the strongest trivial baselines, tables and plots). Every COMET row carries the note that
raw COMET scores are not comparable across languages. Across language packs, the domain divergence
of each adaptation corpus is correlated with chrF++. The work is pipeline.scorecard's.
"""

from __future__ import annotations

from pipeline.scorecard import write_reports


def run() -> None:
    write_reports()


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
