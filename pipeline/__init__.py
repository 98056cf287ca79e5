"""polyalign: adapt and align language models to new languages and cultures, measured honestly."""

__version__ = "0.1.0"

import os as _os

if _os.environ.get("POLYALIGN_OFFLINE") == "1":
    # Offline means no socket at all (tests/test_faults.py guards it): the hub libraries read
    # these at import time, so they are set here, before any stage imports them.
    for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        _os.environ.setdefault(_name, "1")
