"""Per-stage seconds of a `dvc repro`, from its log (each stage logs "<stage>@<pack>: done in X s").

    dvc repro 2>&1 | tee repro.log
    python bench/stage_seconds.py repro.log --out bench/results/<date>-default-graph.json

Writes the seconds of every stage run, their sum by stage kind, the wall clock from the first
start to the last finish, and the share of the stages whose work is mainly decoding or scoring
with the LM (DECODE_SCORE; model loading and their other work included, so an upper bound).
`bench/run_all.py` reads the newest such file for the default graph's decode/score share.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) polyalign: (\S+): (start|done in ([\d.]+) s)$")
DECODE_SCORE = ("mt_errors", "taco_data", "taco_eval", "rm_transfer", "laft_eval", "culture_augment", "culture_eval")


def stage_seconds(log: str) -> dict:
    """{"stages": {name: s}, "by_kind": {stage: s}, "stage_s", "wall_s", "decode_score_share"} of one log."""
    seconds, stamps = {}, []
    for line in log.splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        stamps.append(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S"))
        if m[4] is not None:
            seconds[m[2]] = float(m[4])
    by_kind: dict[str, float] = {}
    for name, s in seconds.items():
        by_kind[name.split("@")[0]] = round(by_kind.get(name.split("@")[0], 0.0) + s, 1)
    total = sum(seconds.values())
    share = sum(s for k, s in by_kind.items() if k in DECODE_SCORE) / total if total else 0.0
    return {"stages": seconds, "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "stage_s": round(total, 1), "wall_s": (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0,
            "decode_score_stages": list(DECODE_SCORE), "decode_score_share": round(share, 3)}


def latest(results: Path) -> dict | None:
    """The newest bench/results/*-default-graph.json, or None."""
    files = sorted(results.glob("*-default-graph.json"))
    return json.loads(files[-1].read_text()) | {"file": files[-1].name} if files else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", default="", help="what the run was (machine load, profile, commit)")
    args = parser.parse_args(argv)
    from pipeline.provenance import hardware

    result = stage_seconds(args.log.read_text(errors="replace")) | {"hardware": hardware(), "note": args.note}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
