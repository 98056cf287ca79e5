"""Train the tiny model for a few steps with pipeline.train (run under `accelerate launch` or
plain python); argv: out_dir grad_accum. Used by tests/test_archs.py's multi-process check."""

import sys
from pathlib import Path

import torch

from pipeline.models import ntrex_sample
from pipeline.train import is_main_process, train_causal_lm

torch.set_num_threads(1)
out, ga = Path(sys.argv[1]), int(sys.argv[2])
examples = [{"prompt": "", "response": t} for t in ntrex_sample("nya", 48)]
metrics = train_causal_lm("tiny-random", examples, out, {
    "max_steps": 4, "batch_size": 2, "grad_accum": ga, "max_len": 64, "lr": 3e-3, "mixed_precision": "no",
    "progress": False, "checkpoint_every": 0, "output_vocab": "full", "lora_dropout": 0.0})
if is_main_process():
    print("PROCESSES", metrics["processes"], "LOSS", metrics["final_loss"])
