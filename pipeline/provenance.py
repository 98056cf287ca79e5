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


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def hardware() -> str:
    """`cuda:<device>`, or `cpu:<arch>x<cores>:<torch's CPU capability>[+bf16]`, e.g.
    `cpu:x86_64x2:avx512+bf16` or `cpu:x86_64x2:avx2`: machines with bf16 matrix units train in
    bf16 autocast (`train.mixed_precision: auto`) and take other fast paths, so every figure names it."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"cpu:{platform.machine()}x{os.cpu_count()}:{capability}{'+bf16' if cpu_has_bf16() else ''}"


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
