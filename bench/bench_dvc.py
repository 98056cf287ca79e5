"""How long a `dvc repro` takes when nothing changed (target: under 5 s).

Run after a full `dvc repro`: `python bench/bench_dvc.py`. Prints JSON with the median of
`--repeat` runs; `bench/run_all.py` includes it in reports/bench.json when the graph is built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

UP_TO_DATE = "Data and pipelines are up to date."


def noop_repro_seconds(root: Path, repeat: int = 3) -> dict:
    """Seconds of `dvc repro` on a graph with nothing to do; {"skipped": why} where `dvc status` says
    some stage would run (a fresh clone holds the committed results but not the outputs they came
    from: timing its `dvc repro` would run the whole graph)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    status = subprocess.run([dvc, "status"], cwd=root, capture_output=True, text=True)
    if UP_TO_DATE not in status.stdout:
        return {"skipped": f"`dvc status` in {root} does not say the graph is built and up to date "
                           "(build it with `dvc repro`, or pass --dvc-root a built checkout)"}
    times, outputs = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([dvc, "repro"], cwd=root, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        outputs.append(proc.stdout)
    changed = [o for o in outputs if "Running stage" in o]
    return {"dvc_noop_repro_s_median": statistics.median(times), "dvc_noop_repro_s_max": max(times),
            "dvc_noop_repro_runs": repeat, "dvc_noop_repro_ran_stages": len(changed)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(noop_repro_seconds(Path.cwd(), args.repeat), indent=2))
