"""Provenance for every metric file: a sacrebleu-style signature string plus details."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "sacrebleu", "fasttext", "dvc", "polyalign")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return f"cpu:{platform.machine()}x{os.cpu_count()}"


def signature(**parts) -> str:
    """`key:value|key:value|...` in a stable order, plus package versions and hardware.

    Values that are dicts or lists (configs) are folded to a short hash so the string
    stays readable while any change in them changes the signature.
    """
    fields = []
    for key, value in parts.items():
        if isinstance(value, (dict, list, tuple)):
            value = sha256_text(json.dumps(value, sort_keys=True, default=str))[:12]
        fields.append(f"{key}:{value}")
    if "stage" in parts and "chat" not in parts:  # prompts wrapped in a chat template change every score
        from pipeline.models import chat_signature

        chat = chat_signature(str(parts["stage"]))
        if chat != "off":
            fields.append(f"chat:{chat}")
    fields += [f"{k}:{v}" for k, v in package_versions().items()]
    fields.append(f"hw:{hardware()}")
    return "|".join(fields)
