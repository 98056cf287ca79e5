"""The thin `main()` every stage shares: parse arguments, run, turn user errors into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.errors import PolyalignError


def stage_main(run: Callable, description: str, *, pack: bool = True, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    if pack:
        parser.add_argument("--pack", required=True, help="pack id (file stem in languages/ or cultures/)")
    args = parser.parse_args(argv)
    from pipeline.models import set_stage

    set_stage(run.__module__.rsplit(".", 1)[-1])  # the stage's model.chat_template setting applies
    try:
        run(args.pack) if pack else run()
    except PolyalignError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    return 0
