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


def load_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping; invalid YAML is a one-line error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolyalignError(path, "(file)", "file not found", "check the path") from None
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
