"""The thin `main()` every stage shares: parse arguments, run, turn user errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from pipeline.errors import PolyalignError


def stage_main(run: Callable, description: str, *, pack: bool = True, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    if pack:
        parser.add_argument("--pack", required=True, help="pack id (file stem in languages/ or cultures/)")
    args = parser.parse_args(argv)
    from pipeline.models import set_stage

    stage = stage_name(run)
    set_stage(stage)  # the stage's model.chat_template setting applies
    setup_logging()
    name, start = f"{stage}@{args.pack}" if pack else stage, time.perf_counter()
    log.info("%s: start", name)
    try:
        run(args.pack) if pack else run()
    except PolyalignError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    log.info("%s: done in %.1f s", name, time.perf_counter() - start)
    return 0


log = logging.getLogger("polyalign")


def stage_name(run: Callable) -> str:
    """`laft` for stages.laft's run(), also under `python -m stages.laft` (module `__main__`)."""
    module = run.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rsplit(".", 1)[-1]


class _Stdout(logging.StreamHandler):
    """A handler on whatever sys.stdout is when a line is written (pytest swaps it)."""

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


def setup_logging() -> None:
    """Timestamped phase lines on stdout (stderr keeps the one-line errors and progress bars)."""
    if not log.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
