"""Layout rules: stages import only pipeline/ (never another stage), and pipeline/ never imports stages/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# stages/_cli.py is the shared argument-parsing main, not a stage: every stage may import it.
NOT_A_STAGE = {"stages._cli"}
# Known offenders while issue 18 lands on the other branches (mt, laft, tacorm, culture): the lead
# empties this list after merging them. A stage that is not listed here fails now.
ALLOWED = {
    ("stages.laft_eval", "stages.laft"),
    ("stages.maft", "stages.laft"),
    ("stages.culture_eval", "stages.culture_augment"),
    ("stages.culture_eval", "stages.culture_sft"),
    ("stages.culture_sft", "stages.culture_augment"),
    ("stages.taco_eval", "stages.taco_data"),
    ("stages.taco_eval", "stages.taco_sft"),
    ("stages.rm_transfer", "stages.rm_train"),
    ("stages.rm_transfer", "stages.taco_data"),
    ("stages.rm_transfer", "stages.taco_eval"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions), as dotted names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module == "stages":     # from stages import laft
                out |= {f"stages.{a.name}" for a in node.names}
    return out


def stage_imports(folder: str) -> set[tuple[str, str]]:
    """(importer, imported stage module) for every .py under folder/."""
    pairs = set()
    for path in sorted((ROOT / folder).glob("*.py")):
        me = f"{folder}.{path.stem}"
        pairs |= {(me, m) for m in imported_modules(path)
                  if (m == "stages" or m.startswith("stages.")) and m not in NOT_A_STAGE and m != me}
    return pairs


def test_no_stage_imports_another_stage():
    offenders = stage_imports("stages") - ALLOWED
    assert not offenders, f"stages import other stages (move the shared code to pipeline/): {sorted(offenders)}"


def test_the_allow_list_names_only_current_offenders():
    """When a branch lands and stops importing a stage, its entry must go (so the list can only shrink)."""
    stale = ALLOWED - stage_imports("stages")
    assert not stale, f"remove from ALLOWED in tests/test_layout.py: {sorted(stale)}"


def test_the_library_never_imports_a_stage():
    assert not stage_imports("pipeline"), "pipeline/ must not import stages/ (pipeline/cli.py included)"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from stages.taco_eval import parse_taco\n    from stages import laft\n")
    assert imported_modules(f) == {"stages.taco_eval", "stages", "stages.laft"}
