"""Build an offline data mirror: every pinned remote source the packs and params.yaml name.

Run on a machine with network access (`polyalign mirror fetch DEST`), copy DEST to the
offline machine and point `POLYALIGN_MIRROR` at it. Each file is fetched through the
same resolver the stages use (`pipeline/sources.py`: mirror, cache, download, sha256
check), then copied to the place the resolver looks for it in a mirror
(`github/<owner>/<repo>/<path>`, `hub/<repo>/<path>`, `npm/<package>-<version>/<path>`)
and verified again there. PyPI sources are not mirrored: the resolver reads them from
the installed package (requirements.lock) or pip's own cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from pipeline.config import enabled, load_params, section
from pipeline.errors import PolyalignError
from pipeline.packs import KINDS, GithubSource, HubSource, NpmSource, SourceSpec, load, pack_ids
from pipeline.paths import safe_join
from pipeline.sources import resolve, sha256_path
from pipeline.text import ntrex_pins, ntrex_source

REMOTE_KINDS = {"github", "hub", "npm", "pypi"}
_SPEC = TypeAdapter(SourceSpec)


def find_specs(obj) -> list:
    """Every source spec (a mapping with a remote `kind`) anywhere inside nested dicts/lists."""
    if isinstance(obj, list):
        return [s for item in obj for s in find_specs(item)]
    if not isinstance(obj, dict):
        return []
    if obj.get("kind") in REMOTE_KINDS:
        try:
            return [_SPEC.validate_python(obj)]
        except ValidationError:
            return []
    return [s for value in obj.values() for s in find_specs(value)]


def wanted_packs(params: dict, every_pack: bool) -> list[tuple[str, str]]:
    """(kind, id) of the enabled packs plus the reference culture; or every pack on disk."""
    if every_pack:
        return [(kind, pid) for kind in KINDS for pid in pack_ids(kind)]
    pairs = [(kind, pid) for kind in KINDS for pid in enabled(kind, params)]
    reference = (params.get("culture") or {}).get("reference")
    if reference and ("cultures", reference) not in pairs:
        pairs.append(("cultures", reference))
    return pairs


def ntrex_specs(params: dict) -> list:
    """The NTREX files the `lid` stage reads: every language when `lid.languages: all`."""
    codes = section("lid", params).get("languages", "all")
    codes = list(ntrex_pins()) if codes == "all" else ["documents", "eng", *codes]
    return [ntrex_source(code).spec for code in codes]


def needed_specs(every_pack: bool = False) -> list:
    """Unique remote specs of the packs, params.yaml (all profiles) and the LID stage, in a stable order."""
    params = load_params()
    specs = [s for kind, pid in wanted_packs(params, every_pack) for s in find_specs(load(kind, pid).model_dump())]
    specs += find_specs(params) + ntrex_specs(params)
    unique = list({s.model_dump_json(): s for s in specs}.values())
    _check_one_pin_per_path(unique)
    return sorted(unique, key=lambda s: (s.kind, mirror_path(s) or f"{s.package}/{s.path}"))


def _check_one_pin_per_path(specs: list) -> None:
    """A mirror holds one version of each path: two different pins for one path cannot share it."""
    seen = {}
    for spec in specs:
        rel = mirror_path(spec)
        if rel is None:
            continue
        if rel in seen and seen[rel].sha256 != spec.sha256:
            raise PolyalignError(rel, "sha256", "pinned at two different versions by the packs/params",
                                 "pin one commit for that file everywhere")
        seen.setdefault(rel, spec)


def mirror_path(spec) -> str | None:
    """Where the resolver looks for `spec` inside a mirror (None: not mirrored)."""
    if isinstance(spec, GithubSource):
        return f"github/{spec.repo}/{spec.path}"
    if isinstance(spec, HubSource):
        return f"hub/{spec.repo}/{spec.path}"
    if isinstance(spec, NpmSource):
        return f"npm/{spec.package}-{spec.version}/{spec.path}"
    return None


def _copy(src: Path, dest: Path) -> None:
    """Copy a file or folder to `dest` atomically (temporary sibling, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    _remove(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    if dest.is_dir():
        _remove(dest)
    os.replace(tmp, dest)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fetch_one(spec, dest: Path) -> str:
    """Put one spec into the mirror at `dest`; returns 'present', 'fetched' or 'skipped (pypi)'."""
    rel = mirror_path(spec)
    if rel is None:
        return "skipped (pypi)"
    target = safe_join(dest, rel, file=dest, field="path")
    if target.exists() and sha256_path(target) == spec.sha256:
        return "present"
    _copy(resolve(spec, origin=f"mirror {rel}"), target)
    if spec.sha256 and sha256_path(target) != spec.sha256:
        raise PolyalignError(target, "sha256", "copy does not match the pin", "delete it and fetch again")
    return "fetched"


def manifest_row(spec) -> str:
    """MANIFEST.tsv line: path, repo (or package), commit (or revision/version), sha256."""
    origin = getattr(spec, "repo", None) or spec.package
    revision = getattr(spec, "commit", None) or getattr(spec, "revision", None) or spec.version
    return "\t".join([mirror_path(spec), origin, revision, spec.sha256 or ""])


def write_manifest(dest: Path, specs: list) -> Path:
    """Merge the mirrored specs into DEST/MANIFEST.tsv (header, then rows sorted by path)."""
    path = dest / "MANIFEST.tsv"
    rows = {}
    if path.exists():
        rows = {line.split("\t")[0]: line for line in path.read_text().splitlines()[1:] if line}
    rows.update({mirror_path(s): manifest_row(s) for s in specs if mirror_path(s)})
    tmp = path.with_name(".MANIFEST.tsv.part")
    tmp.write_text("path\trepo\tcommit\tsha256\n" + "".join(f"{rows[k]}\n" for k in sorted(rows)))
    os.replace(tmp, path)
    return path
