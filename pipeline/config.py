"""params.yaml: sections named after stages, with a profile overlay.

`profile: smoke` deep-merges `profiles.smoke.<section>` over `<section>`, so the
smoke profile is the same graph with a tiny model and a handful of examples.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pipeline.errors import PolyalignError, did_you_mean
from pipeline.paths import repo_root


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; keys of `over` win, lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen and key != "<<":
                raise DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        self.key, self.first, self.again = key, first, again


def _read_text(path: Path) -> str:
    """The file as UTF-8; other bytes are a one-line error with the offending byte's line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolyalignError(path, "(file)", "file not found", "check the path") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolyalignError(path, f"line {line}", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                             f"{exc.start})", "save the file as UTF-8 text") from None


def load_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping; invalid YAML, a repeated key or non-UTF-8 bytes are a one-line
    error naming the file and the line."""
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKey as dup:
        raise PolyalignError(path, f"{dup.key} (line {dup.again})", f"duplicate key '{dup.key}' (first on line "
                             f"{dup.first}; YAML would keep only the last)", "keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(document)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolyalignError(path, where, f"invalid YAML: {problem}", "fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolyalignError(path, "(document)", "expected a mapping at the top level", "write key: value pairs")
    return data


def params_path() -> Path:
    return repo_root() / "params.yaml"


def load_params() -> dict:
    return load_yaml(params_path())


def section(name: str, params: dict | None = None) -> dict:
    """One stage's parameters with the active profile's overrides applied."""
    params = load_params() if params is None else params
    if name not in params:
        raise PolyalignError(params_path(), name, "section missing", did_you_mean(name, params) or "add it")
    profile = params.get("profile", "default")
    profiles = params.get("profiles", {})
    if profile != "default" and profile not in profiles:
        raise PolyalignError(params_path(), "profile", f"unknown profile '{profile}'",
                             did_you_mean(profile, profiles) or f"choose one of {sorted(profiles)}")
    over = profiles.get(profile, {}).get(name, {}) if profile != "default" else {}
    return deep_merge(params[name], over)


def enabled(kind: str, params: dict | None = None) -> list[str]:
    """Enabled pack ids of one kind ('languages' or 'cultures')."""
    params = load_params() if params is None else params
    return list(params.get(kind) or [])
