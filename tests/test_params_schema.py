"""params.yaml schema (pipeline/schema.py) and the one place settings resolve (pipeline/config.section)."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.errors import PolyalignError
from pipeline.schema import SECTIONS, TrainSettings, validate_params
from pipeline.train import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    return config.load_yaml(ROOT / "params.yaml")


def test_shipped_params_and_every_profile_validate():
    params = shipped()
    validate_params(params)
    for name in params["profiles"]:  # each profile active, as `profile: <name>` would run
        validate_params({**params, "profile": name})


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
    for model in [*SECTIONS.values(), TrainSettings]:
        walk(model)


def test_train_settings_mirror_pipeline_train_defaults():
    assert set(TrainSettings.model_fields) == set(DEFAULTS) - {"curve_file"}


@pytest.mark.parametrize("edit, line", [
    (lambda p: p["profiles"]["smoke"]["mt_errors"].update(max_sentence=4),
     "params.yaml: profiles.smoke.mt_errors.max_sentence: unknown key (did you mean 'max_sentences'?)"),
    (lambda p: p["mt_errors"].update(max_sentence=4),
     "params.yaml: mt_errors.max_sentence: unknown key (did you mean 'max_sentences'?)"),
    (lambda p: p["culture"]["sft"].update(lora_rank=4),
     "params.yaml: culture.sft.lora_rank: unknown key (did you mean 'lora_r'?)"),
    (lambda p: p.update(laft_evl={}), "params.yaml: laft_evl: unknown section (did you mean 'laft_eval'?)"),
    (lambda p: p.update(profile="smok"), "params.yaml: profile: unknown profile 'smok' (did you mean 'smoke'?)"),
])
def test_typo_is_one_line_naming_params_yaml_and_the_field(edit, line):
    params = copy.deepcopy(shipped())
    edit(params)
    with pytest.raises(PolyalignError) as exc:
        validate_params(params)
    assert exc.value.line() == line


@pytest.fixture
def params_repo(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))
    return tmp_path / "params.yaml"


def _set(path: Path, dotted: str, value) -> None:
    """What `dvc exp run -S dotted=value` does to params.yaml."""
    params = yaml.safe_load(path.read_text())
    *head, last = dotted.split(".")
    node = params
    for key in head:
        node = node.setdefault(key, {})
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_shared_train_override_reaches_stages_that_do_not_set_it(params_repo):
    _set(params_repo, "train.lr", 1e-4)
    _set(params_repo, "rm_train.train.lr", 5e-4)  # a stage's own key still wins
    assert config.section("laft")["lr"] == 1e-4
    assert config.section("maft")["lr"] == 1e-4
    assert config.section("taco")["sft"]["lr"] == 1e-4
    assert config.section("culture")["sft"]["lr"] == 1e-4
    assert config.section("rm_train")["train"]["lr"] == 5e-4
    assert config.settings_read()["laft"]["lr"] == 1e-4  # what write_stage records as `settings`
    _set(params_repo, "laft.lr", 2e-3)  # `dvc exp run -S laft.lr=2e-3`: the key exists (null = train.lr)
    assert config.section("laft")["lr"] == 2e-3 and config.section("maft")["lr"] == 1e-4


def test_profile_overlay_and_typo_in_a_loaded_file(params_repo):
    _set(params_repo, "profile", "smoke")
    assert config.section("laft")["max_steps"] == 2 and config.section("laft")["lr"] == 3e-4
    _set(params_repo, "profiles.smoke.mt_errors.max_sentence", 4)
    with pytest.raises(PolyalignError, match="profiles.smoke.mt_errors.max_sentence: unknown key"):
        config.load_params()


def test_packs_validate_checks_params(tmp_path):
    """`polyalign packs validate` exits 2 with the one-line params.yaml error."""
    repo = tmp_path / "r"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", ".venv", "data", "models", "results", "reports",
                                                              ".dvc", "__pycache__"))
    _set(repo / "params.yaml", "mt_errors.max_sentence", 4)
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "packs", "validate"], cwd=repo, capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 2
    assert "params.yaml: mt_errors.max_sentence: unknown key (did you mean 'max_sentences'?)" in out.stderr
