"""dvc.yaml lists exactly what each stage imports (transitively within pipeline/) and reads from params."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import PROFILE_KEYS, STAGE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """pipeline.x / stages.x -> its file in the repo, else None (third-party)."""
    if not name.startswith(("pipeline", "stages")):
        return None
    path = ROOT / Path(*name.split("."))
    for cand in (path.with_suffix(".py"), path / "__init__.py"):
        if cand.exists():
            return cand
    return None


def project_imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """Project files `path` imports, transitively (function-level imports included)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            file = module_file(name)
            if file and file.name != "__init__.py" and file not in seen:
                seen.add(file)
                project_imports(file, seen)
    return seen


def stage_module(spec: dict) -> str:
    return re.search(r"-m (stages\.\w+)", spec["cmd"]).group(1)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_every_project_import(stage):
    spec = STAGES[stage]
    script = module_file(stage_module(spec))
    wanted = {str(p.relative_to(ROOT)) for p in project_imports(script) | {script}}
    deps = {str(d) for d in spec.get("deps", [])}
    missing = sorted(wanted - deps)
    assert not missing, f"dvc.yaml {stage}: deps miss {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_are_the_declared_keys(stage):
    declared = STAGE_PARAMS[stage]
    want = declared if stage in ("compare",) or not declared else PROFILE_KEYS + declared
    assert [str(p) for p in STAGES[stage].get("params", [])] == want


def test_stages_reading_language_packs_depend_on_the_included_common_file():
    """Packs include languages/_common.yaml (templates): a stage reading a pack must depend on it."""
    for stage, spec in STAGES.items():
        deps = [str(d) for d in spec.get("deps", [])]
        for kind in ("languages", "cultures"):
            if any(d.startswith(f"{kind}/${{") for d in deps) and (ROOT / kind / "_common.yaml").exists():
                assert f"{kind}/_common.yaml" in deps, f"{stage} reads a {kind} pack but not {kind}/_common.yaml"
