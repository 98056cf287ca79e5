"""The CLI: scaffolding a new language pack from CLDR/ISO/NTREX, validating, doctor."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.packs import load_language

runner = CliRunner()


def test_packs_new_kin_scaffolds_valid_registered_pack(repo_copy):
    result = runner.invoke(app, ["packs", "new", "kin"])
    assert result.exit_code == 0, result.output
    pack = load_language("kin")
    assert (pack.bcp47, pack.iso639_3, pack.script, pack.ntrex) == ("rw", "kin", "Latn", "kin")
    assert pack.name == "Kinyarwanda" and pack.autonym == "Ikinyarwanda"
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    assert "kin" in params["languages"] and "kin" in params["packs"]
    assert runner.invoke(app, ["packs", "validate"]).exit_code == 0


def test_packs_new_maps_individual_language_to_ntrex_macro(repo_copy):
    (repo_copy / "languages" / "npi.yaml").unlink()
    assert runner.invoke(app, ["packs", "new", "npi"]).exit_code == 0
    assert load_language("npi").ntrex == "nep"


def test_packs_new_unknown_language_fails_cleanly(repo_copy):
    before = sorted(p.name for p in (repo_copy / "languages").iterdir())
    result = runner.invoke(app, ["packs", "new", "qqq"])
    assert result.exit_code == 2
    assert sorted(p.name for p in (repo_copy / "languages").iterdir()) == before


def test_packs_new_culture_rebuilds_the_hand_checked_pack(repo_copy):
    from pipeline.packs import load_culture

    by_hand = load_culture("kr")
    (repo_copy / "cultures" / "kr.yaml").unlink()
    result = runner.invoke(app, ["packs", "new-culture", "kr"])
    assert result.exit_code == 0, result.output
    scaffolded = load_culture("kr")
    assert scaffolded.model_dump() == by_hand.model_dump()  # same files, same sha256, same BLEnD sets


def test_packs_new_culture_without_survey_data_fails_cleanly(repo_copy):
    before = sorted(p.name for p in (repo_copy / "cultures").iterdir())
    result = runner.invoke(app, ["packs", "new-culture", "fr"])
    assert result.exit_code == 2 and "survey.answers" in result.output and "Germany" in result.output
    assert runner.invoke(app, ["packs", "new-culture", "zz"]).exit_code == 2
    assert sorted(p.name for p in (repo_copy / "cultures").iterdir()) == before
    assert "fr" not in yaml.safe_load((repo_copy / "params.yaml").read_text())["cultures"]


def test_validate_catches_unregistered_pack_list(repo_copy):
    params = repo_copy / "params.yaml"
    params.write_text(params.read_text().replace("packs: [nya, npi, glg, gr, mx, kr]", "packs: [nya]"))
    result = runner.invoke(app, ["packs", "validate"])
    assert result.exit_code == 2 and "packs" in result.output


def test_doctor_lists_lid_and_comet(repo_copy):
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "COMET" in result.output
