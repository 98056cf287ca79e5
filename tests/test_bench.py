"""bench/run_all.py: a failed benchmark is named and makes the run fail."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run_all  # noqa: E402


def test_failures_name_each_failed_child_with_its_last_error_line():
    train = {"sft": {"trainer": {"tokens_per_s": 38.0},
                     "exact": {"error": "Traceback ...\n  File x\npipeline.errors.PolyalignError: offline\n"}}}
    gen = {"error": "Traceback\nRuntimeError: boom"}
    assert run_all.failures(train, gen) == {"train.sft.exact": "pipeline.errors.PolyalignError: offline",
                                            "generate": "RuntimeError: boom"}
    assert run_all.failures({"sft": {"trainer": {}}}, {"batch_8": {}}) == {}
