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


_VALID: dict[str, bool] = {}  # params.yaml texts already validated in this process


def load_params() -> dict:
    """params.yaml, validated against pipeline/schema.py (every profile applied) once per content."""
    path = params_path()
    params = load_yaml(path)
    key = _read_text(path)
    if key not in _VALID:
        from pipeline.schema import validate_params

        validate_params(params, str(path))
        _VALID[key] = True
    return params


# Where each section keeps pipeline.train settings: params.yaml `train` (minus `launch`) is merged
# under them here, so `dvc exp run -S train.lr=...` reaches every training stage that does not
# set `lr` itself, and a stage's signature hashes the values it really trains with.
TRAINING: dict[str, tuple[str, ...]] = {"laft": (), "maft": (), "taco": ("sft",), "culture": ("sft",),
                                        "rm_train": ("train",)}

# What each stage read through section() in this process: the resolved values, written into its
# metrics file as `settings` (pipeline.report.write_stage), so `dvc exp show` shows what ran.
READ: dict[str, dict] = {}


def _with_shared_training(values: dict, where: tuple[str, ...], params: dict) -> dict:
    shared = {k: v for k, v in section("train", params).items() if k != "launch"} if "train" in params else {}
    if not where:  # a stage key set to null inherits `train` (so `-S laft.lr=...` has a key to set)
        return deep_merge(shared, {k: v for k, v in values.items() if v is not None or k not in shared})
    inner = values.get(where[0]) or {}
    return {**values, where[0]: _with_shared_training(inner, where[1:], params)}


def section(name: str, params: dict | None = None) -> dict:
    """One stage's parameters, resolved: the active profile's overrides applied, and for training
    sections the shared `train` settings underneath (the stage's own keys win). The one place a
    stage's effective settings come from."""
    params = load_params() if params is None else params
    if name not in params:
        raise PolyalignError(params_path(), name, "section missing", did_you_mean(name, params) or "add it")
    profile = params.get("profile", "default")
    profiles = params.get("profiles", {})
    if profile != "default" and profile not in profiles:
        raise PolyalignError(params_path(), "profile", f"unknown profile '{profile}'",
                             did_you_mean(profile, profiles) or f"choose one of {sorted(profiles)}")
    over = profiles.get(profile, {}).get(name, {}) if profile != "default" else {}
    out = deep_merge(params[name], over or {})
    if name in TRAINING:
        out = _with_shared_training(out, TRAINING[name], params)
    READ[name] = copy.deepcopy(out)
    return out


def settings_read() -> dict:
    """The resolved sections read so far in this process (what write_stage records)."""
    return copy.deepcopy(READ)


def enabled(kind: str, params: dict | None = None) -> list[str]:
    """Enabled pack ids of one kind ('languages' or 'cultures')."""
    params = load_params() if params is None else params
    return list(params.get(kind) or [])


# The params.yaml keys each dvc.yaml stage reads (profile-resolved through section()); dvc.yaml's
# `params:` lists exactly these plus PROFILE_KEYS (tests/test_dvc_deps.py checks it). Training
# settings sections are whole (any pipeline.train key may be added there); `model.base` only,
# since the model registry reaches stages through models/base.json (a dep).
PROFILE_KEYS = ["profile", "profiles.${profile}"]
TACO_DATA_KEYS = ["taco.base", "taco.split_salt", "taco.heldout_fraction", "taco.max_chars", "taco.max_instructions",
                  "taco.round_trip_chrf", "taco.min_samples", "taco.chunk", "taco.probe", "taco.curriculum"]
STAGE_PARAMS: dict[str, list[str]] = {
    "model_fingerprint": ["model.base", "model.helpers"],
    "model": ["model"],
    "lid": ["lid", "data"],
    "data": ["data", "stats.mde.data"],
    "rm_train": ["model.base", "rm_train", "train", "stats.mde.rm_train"],
    "rm_transfer": ["model.base", "rm_train", "rm_transfer", "train", "taco.eval", "stats.mde.rm_transfer"],
    "taco_data": ["model.base", *TACO_DATA_KEYS],
    "taco_sft": ["model.base", "taco.base", "taco.min_samples", "taco.sft", "train"],
    "taco_eval": ["model.base", "taco.base", "taco.min_eval", "taco.eval", "taco.judge", "stats.mde.taco_eval"],
    "laft_corpus": ["laft.min_tokens", "laft.udhr_heldout"],
    "laft": ["model.base", "laft", "train"],
    "maft": ["model.base", "languages", "data", "laft.min_tokens", "laft.udhr_heldout", "maft", "laft_eval", "train",
             "stats.mde.maft"],
    "laft_eval": ["model.base", "data", "laft.base", "laft.udhr_heldout", "maft.base", "maft.high_resource",
                  "laft_eval", "stats.mde.laft_eval"],
    "culture_augment": ["model.base", "culture.augment"],
    "culture_sft": ["model.base", "culture.sft", "train"],
    "culture_sft_all": ["model.base", "cultures", "culture.sft", "culture.sft_all", "train",
                        "stats.mde.culture_sft_all"],
    "culture_eval": ["model.base", "culture.reference", "culture.sft.base", "culture.sft.target", "culture.sft_all",
                     "culture.eval", "culture.blend", "stats.mde.culture_eval"],
    "mt_errors": ["model.base", "mt_errors", "taco.base", "laft.base", "stats.mde.mt_errors"],
    "scorecard": [],
    "scorecard_shared": [],
    "compare": ["languages", "cultures"],
}


def base_model(cfg: dict) -> str:
    """A stage section's `base` if set, else the project's base model (`model.base`)."""
    return cfg.get("base") or section("model")["base"]
