"""Layout rules: stages import only pipeline/ (never another stage), and pipeline/ never imports stages/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# stages/_cli.py is the shared argument-parsing main, not a stage: every stage may import it.
NOT_A_STAGE = {"stages._cli"}
ALLOWED: set[tuple[str, str]] = set()   # no exceptions: shared code lives in pipeline/


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
