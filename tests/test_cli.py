"""The CLI: scaffolding a new language pack from CLDR/ISO/NTREX, validating, doctor."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.packs import load_language, pack_ids

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


# --------------------------------------------------------------------------- new locales (issue 16)
# tag -> (pack id, script, direction, NTREX code, autonym or None when CLDR has none in the script)
NEW_LOCALES = {
    "dv": ("div", "Thaa", "rtl", "div", None),
    "ar": ("arb", "Arab", "rtl", "arb", "العربية"),
    "sr-Latn": ("srp_Latn", "Latn", "ltr", "srp-Latn", "srpski"),
    "zh-Hant": ("zho_Hant", "Hant", "ltr", "zho-TW", "中文"),
    "bo": ("bod", "Tibt", "ltr", "bod", "བོད་སྐད་"),
    "ti": ("tir", "Ethi", "ltr", "tir", "ትግርኛ"),
    "km": ("khm", "Khmr", "ltr", "khm", "ខ្មែរ"),
}


@pytest.mark.parametrize("tag", list(NEW_LOCALES))
def test_packs_new_locale(repo_copy, tag):
    pack_id, script, direction, ntrex, own_name = NEW_LOCALES[tag]
    result = runner.invoke(app, ["packs", "new", tag])
    assert result.exit_code == 0, result.output
    pack = load_language(pack_id)  # validates
    assert (pack.script, pack.direction, pack.ntrex) == (script, direction, ntrex)
    assert pack.sources.parallel.spec.path == f"NTREX-128/newstest2019-ref.{ntrex}.txt"
    if own_name:
        assert pack.autonym.startswith(own_name) and not pack.review
    else:  # no data source has it: a visible marker in the field and in `review`, reported by validate
        assert pack.autonym.startswith("REVIEW") and pack.review[0].startswith("autonym")
        assert "review:" in runner.invoke(app, ["packs", "validate"]).output
    assert pack.resource_level in ("low", "mid", "high")
    assert pack_id in yaml.safe_load((repo_copy / "params.yaml").read_text())["languages"]
    assert runner.invoke(app, ["packs", "validate"]).exit_code == 0


def test_script_variants_coexist(repo_copy):
    for tag in ("sr-Latn", "sr", "zh-Hant", "zh"):
        result = runner.invoke(app, ["packs", "new", tag])
        assert result.exit_code == 0, result.output
    assert {"srp_Latn", "srp_Cyrl", "zho_Hant", "zho_Hans"} <= set(pack_ids("languages"))
    assert load_language("srp_Cyrl").script == "Cyrl" and load_language("zho_Hans").ntrex == "zho-CN"
    assert runner.invoke(app, ["packs", "validate"]).exit_code == 0


@pytest.mark.parametrize(("tag", "code"), [("ar", "arb"), ("fa", "fas"), ("prs", "prs"), ("ms", "msa"),
                                           ("sw", "swa"), ("npi", "nep"), ("sr", "srp-Cyrl"), ("zh", "zho-CN"),
                                           ("fr-CA", "fra-CA"), ("fr", "fra"), ("yue", "yue")])
def test_macrolanguage_and_variant_mapping(tag, code):
    from pipeline.scaffold import ntrex_match

    assert ntrex_match(tag)[0] == code


def test_resource_level_from_population():
    import langcodes

    from pipeline.scaffold import resource_level

    levels = {t: resource_level(langcodes.Language.get(t))[0] for t in ("es", "fr", "km", "dv", "bo")}
    assert levels == {"es": "high", "fr": "high", "km": "mid", "dv": "low", "bo": "low"}


def test_stage_phases_are_timestamped_log_lines_on_stdout(capsys):
    """stage_main: start/done lines with a timestamp on stdout; an error stays one line on stderr."""
    import logging
    import re

    from pipeline.errors import PolyalignError
    from stages._cli import stage_main

    def run(pack):
        logging.getLogger("polyalign.train").info("phase of %s", pack)

    run.__module__ = "stages.laft"
    assert stage_main(run, "doc", argv=["--pack", "glg"]) == 0
    out = capsys.readouterr().out.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.fullmatch(stamp + "polyalign: laft@glg: start", out[0])
    assert re.fullmatch(stamp + "polyalign.train: phase of glg", out[1])
    assert re.fullmatch(stamp + r"polyalign: laft@glg: done in \d+\.\d s", out[2])

    def bad(pack):
        raise PolyalignError("languages/glg.yaml", "script", "unknown script", "use Latn")

    bad.__module__ = "stages.laft"
    assert stage_main(bad, "doc", argv=["--pack", "glg"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "languages/glg.yaml" in captured.err
    assert "done" not in captured.out


def test_stage_name_under_python_dash_m(monkeypatch):
    """`python -m stages.laft` runs the module as __main__ (spec name stages.laft): the stage,
    and so its chat-template setting, is still `laft`."""
    import sys
    import types

    from stages._cli import stage_name

    def run(pack):
        pass

    run.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", types.SimpleNamespace(name="stages.laft"), raising=False)
    assert stage_name(run) == "laft"
