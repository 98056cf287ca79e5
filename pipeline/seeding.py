"""The one seeding helper: every stage and test calls `seed_everything` before any randomness."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels.

    `warn_only=True` because a few CPU ops have no deterministic variant; they warn
    instead of failing a run. CUBLAS_WORKSPACE_CONFIG makes cuBLAS deterministic on GPUs
    (it must be set before the first cuBLAS call; harmless on CPU).
    """
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
