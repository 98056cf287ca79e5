"""The thin `main()` every stage shares: parse arguments, run, turn user errors into one line."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.errors import PolyalignError


def stage_main(run: Callable, description: str, *, pack: bool = True, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    if pack:
        parser.add_argument("--pack", required=True, help="pack id (file stem in languages/ or cultures/)")
    args = parser.parse_args(argv)
    try:
        run(args.pack) if pack else run()
    except PolyalignError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    return 0
