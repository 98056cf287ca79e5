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


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) below its bf16 kernels: with one of
# these set, oneDNN (every bf16 GEMM here) emulates bf16 in fp32 and bf16 no longer pays off
ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _bf16_units(flags: str) -> bool:
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _onednn_below_bf16() -> bool:
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return cap in ONEDNN_CAPS_WITHOUT_BF16


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays off, and
    oneDNN is not capped below them (`ONEDNN_MAX_CPU_ISA=AVX2`: how bench/decode_at.py --isa avx2
    runs an AVX2-only machine's code paths on a bf16 machine)."""
    return not _onednn_below_bf16() and _bf16_units(_cpu_flags())


def hardware() -> str:
    """`cuda:<device>`, or `cpu:<arch>x<cores>:<torch's CPU capability>[+bf16][-capped]`, e.g.
    `cpu:x86_64x2:avx512+bf16` or `cpu:x86_64x2:avx2`: machines with bf16 matrix units train in
    bf16 autocast (`train.mixed_precision: auto`) and take other fast paths, so every figure names it.
    `-capped`: the paths run are below what this CPU has (AVX-512 or bf16 units held back by the
    environment, as bench/decode_at.py --isa does): another kind's code on this machine's memory and clock."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    flags = _cpu_flags()
    units = _bf16_units(flags)
    bf16 = units and not _onednn_below_bf16()
    avx512 = all(f" {flag}" in flags for flag in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))  # torch's AVX512
    capped = avx512 and capability != "avx512" or units and not bf16
    return f"cpu:{platform.machine()}x{os.cpu_count()}:{capability}{'+bf16' if bf16 else ''}{'-capped' if capped else ''}"


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
