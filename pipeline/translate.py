"""Translators: the pack's preference list, first available wins; cached; failures counted.

A pack lists translators in order of preference (`translators:` in languages/<id>.yaml):

- `apertium`  a Debian Apertium pair (`apertium -u <pair>`), rule-based, offline;
- `llm-icl`   a causal LM prompted with `shots` example pairs from the pack's parallel
              *train* split (template `translate`), greedy, cut at the first newline;
- `hub-mt`    a transformers translation model (hub id or local folder; needs a network
              unless it is a local path);
- `file`      a precomputed TSV `source<TAB>translation` inside the repository.

`Translator(pack).translate(texts, FORWARD | BACKWARD)` splits each text into lines and
sentences (the unit every backend translates), looks every segment up in a per-system
SQLite cache under `cache_dir()/translations/` keyed by sha256(system id, direction,
segment), translates only the misses in one batch, and judges each whole text: an empty
output, or one the pack's language identifier places in another language, is a failure,
counted by kind and returned as `ok=False`; it is never silently kept.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack
from pipeline.packs import Translator as TranslatorSpec
from pipeline.paths import cache_dir, data_dir, repo_root, safe_join
from pipeline.provenance import sha256_file, sha256_text

FORWARD, BACKWARD = "en-tgt", "tgt-en"
DIRECTIONS = (FORWARD, BACKWARD)
# Language ID is unreliable on very short strings ("Confiado", "42", a name): outputs with
# fewer letters than this are not judged by LID (they can still fail as empty).
MIN_LID_LETTERS = 20
_SENTENCE_END = re.compile(r"(?<=[.!?।])\s+")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)

LangCheck = Callable[[list[str], str], list[bool]]  # (texts, "en" | "tgt") -> in that language?


# --------------------------------------------------------------------------- segmentation
def segments_of(text: str) -> list[str]:
    """The units a text is translated in: its non-blank lines, split into sentences."""
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(s for s in _SENTENCE_END.split(line.strip()) if s)
    return out


def reassemble(text: str, translated: dict[str, str]) -> str:
    """Rebuild `text` from translated segments, keeping its line structure and indentation."""
    lines = []
    for line in text.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        parts = [translated[s] for s in _SENTENCE_END.split(line.strip()) if s]
        lines.append(indent + " ".join(p for p in parts if p) if parts else line)
    return "\n".join(lines).strip()


def letters(text: str) -> int:
    return len(_LETTER.findall(text))


# --------------------------------------------------------------------------- cache
class Cache:
    """Per-system SQLite map sha256(system, direction, segment) -> translation."""

    def __init__(self, system: str, root: Path | None = None):
        root = (root or cache_dir()) / "translations"
        root.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", system)[:80] + "-" + sha256_text(system)[:10]
        self.system, self.path = system, root / f"{slug}.sqlite"
        self._discard_if_corrupt()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, direction TEXT, source TEXT, output TEXT)")

    def _discard_if_corrupt(self) -> None:
        """A truncated or damaged cache file (a killed copy, a full disk) is moved aside and
        rebuilt, never read: SQLite's quick_check catches torn pages and a short file."""
        if not self.path.exists():
            return
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as db:
                ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError:
            ok = False
        if not ok:
            aside = self.path.with_name(f"{self.path.name}.corrupt")
            os.replace(self.path, aside)
            print(f"warning: {self.path}: translation cache failed SQLite's integrity check; moved to "
                  f"{aside.name} and rebuilding", file=sys.stderr)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def key(self, direction: str, segment: str) -> str:
        return sha256_text(f"{self.system}\x00{direction}\x00{segment}")

    def get_many(self, direction: str, segments: list[str]) -> dict[str, str]:
        keys = {self.key(direction, s): s for s in segments}
        found: dict[str, str] = {}
        with self._connect() as db:
            items = list(keys)
            for i in range(0, len(items), 500):  # SQLite's bound-parameter limit
                chunk = items[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for key, output in db.execute(f"SELECT key, output FROM t WHERE key IN ({marks})", chunk):
                    found[keys[key]] = output
        return found

    def put_many(self, direction: str, pairs: dict[str, str]) -> None:
        rows = [(self.key(direction, s), direction, s, o) for s, o in pairs.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?, ?)", rows)


# --------------------------------------------------------------------------- backends
def _model_name(spec: TranslatorSpec) -> str:
    """'base' (or nothing) means params.yaml `model.base`."""
    if spec.model in (None, "base"):
        from pipeline.config import section

        return section("model")["base"]
    return spec.model


def _flores(pack: LanguagePack) -> str:
    return f"{pack.iso639_3}_{pack.script}"


class Apertium:
    """`apertium -u <pair>`: one process per batch, segments separated by blank lines.

    Why blank lines: Apertium moves words across single newlines (measured: "star\\nLine
    two." came back as "Liña\\nde estrela dous."), but a blank line is a sentence end to it,
    so segments never mix. If the count of returned segments differs, each is redone alone.
    """

    def __init__(self, spec: TranslatorSpec, pack: LanguagePack):
        if not spec.pair or "-" not in spec.pair:
            raise PolyalignError(f"languages/{pack.id}.yaml", "translators.pair", f"apertium pair '{spec.pair}' "
                                 "is not of the form <src>-<tgt>", "e.g. en-gl")
        src, tgt = spec.pair.split("-", 1)
        self.pairs = {FORWARD: spec.pair, BACKWARD: f"{tgt}-{src}"}
        self.spec = spec

    @staticmethod
    def installed_pairs() -> set[str]:
        if shutil.which("apertium") is None:
            return set()
        done = subprocess.run(["apertium", "-l"], capture_output=True, text=True, timeout=60)
        return {line.strip() for line in done.stdout.splitlines() if line.strip()}

    def available(self) -> tuple[bool, str]:
        if shutil.which("apertium") is None:
            return False, "apertium binary not installed"
        missing = set(self.pairs.values()) - self.installed_pairs()
        if missing:
            return False, f"apertium pair(s) {sorted(missing)} not installed (apt-get install {self.spec.apt_package})"
        return True, ""

    def system_id(self) -> str:
        version = _dpkg_version(self.spec.apt_package) if self.spec.apt_package else ""
        return f"apertium:{self.spec.pair}:{self.spec.apt_package}={version or 'unknown'}"

    def translate(self, segments: list[str], direction: str) -> list[str]:
        pair = self.pairs[direction]
        joined = "\n\n".join(" ".join(s.split()) for s in segments)
        out = self._run(pair, joined).strip("\n").split("\n\n")
        if len(out) != len(segments):
            out = [self._run(pair, " ".join(s.split())) for s in segments]
        return [" ".join(o.split()) for o in out]

    @staticmethod
    def _run(pair: str, text: str) -> str:
        done = subprocess.run(["apertium", "-u", pair], input=text, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"apertium {pair} failed: {done.stderr.strip()[:200]}")
        return done.stdout


def _dpkg_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return ""
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


class LlmIcl:
    """A causal LM prompted with `shots` parallel train pairs; greedy; first line kept."""

    # Output budget per sentence: its source's tokens x the 99th percentile of the
    # output/input token ratio on the pack's own train pairs, plus slack. Measured with
    # Gemma-3's tokenizer (300 NTREX train pairs): en->nya p99 2.88, en->npi 2.27, en->glg
    # 1.96, and below 1.0 back into English. Each row also stops once its first line is
    # complete (generate's stop_after_first_line: the kept line is unchanged).
    # Batch 16: decoding a 270M model on CPU is bound by reading the weights, so a step of
    # 16 rows costs little more than one of 8. Measured (gemma-3-270m, 2-core idle machine,
    # 16 NTREX sentences en->nya 4-shot, 100 new tokens): batch 8 73.8 s, batch 16 56.2 s;
    # with the first-line stop 45.4 s and 38.1 s; identical kept lines in all four.
    TOKEN_SLACK, TOKEN_CAP, RATIO_QUANTILE = 8, 256, 0.99

    def __init__(self, spec: TranslatorSpec, pack: LanguagePack, *, batch_size: int = 16):
        self.spec, self.pack, self.batch_size = spec, pack, batch_size
        self.model_name = _model_name(spec)
        self._model = None
        self._ratios: dict[str, float] = {}
        self._template = pack.templates.get("translate")

    def _train_path(self) -> Path:
        return data_dir(self.pack.id) / "train.jsonl"

    def available(self) -> tuple[bool, str]:
        if self._template is None:
            return False, "pack has no 'translate' template"
        if not self._train_path().exists():
            return False, f"{self._train_path()} missing (run `dvc repro data@{self.pack.id}`)"
        return True, ""

    def system_id(self) -> str:
        from pipeline.models import fingerprint

        train = sha256_file(self._train_path())[:12] if self._train_path().exists() else "none"
        return (f"llm-icl:{self.model_name}:{fingerprint(self.model_name)}:shots{self.spec.shots}:"
                f"{self._template.id if self._template else 'none'}:train{train}:"
                f"budget-row-p{int(self.RATIO_QUANTILE * 100)}+{self.TOKEN_SLACK}<={self.TOKEN_CAP}")

    def shots(self) -> list[dict]:
        """`shots` train pairs of moderate length, chosen by a stable hash (same for both directions)."""
        from pipeline.io import read_jsonl

        rows = [r for r in read_jsonl(self._train_path()) if 40 <= len(r["en"]) <= 140 and r["tgt"].strip()]
        rows.sort(key=lambda r: sha256_text(f"icl_shots_v1:{r['doc']}:{r['line']}"))
        return rows[: self.spec.shots]

    def prompts(self, segments: list[str], direction: str) -> list[str]:
        names = ("English", self.pack.name) if direction == FORWARD else (self.pack.name, "English")
        keys = ("en", "tgt") if direction == FORWARD else ("tgt", "en")
        examples = "".join(f"{names[0]}: {r[keys[0]]}\n{names[1]}: {r[keys[1]]}\n" for r in self.shots())
        return [self._template.text.format(src_name=names[0], tgt_name=names[1], examples=examples, source=s)
                for s in segments]

    def _load(self):
        if self._model is None:
            from pipeline.models import load_model

            self._model = load_model(self.model_name)
        return self._model

    def ratio(self, direction: str, tok) -> float:
        """Output/input token-count ratio (RATIO_QUANTILE) over up to 300 train pairs."""
        if direction not in self._ratios:
            from pipeline.io import read_jsonl

            rows = [r for r in read_jsonl(self._train_path())[:300] if r["en"].strip() and r["tgt"].strip()]
            src, tgt = ("en", "tgt") if direction == FORWARD else ("tgt", "en")
            ratios = sorted(_n_tokens(tok, r[tgt]) / max(1, _n_tokens(tok, r[src])) for r in rows)
            self._ratios[direction] = ratios[min(len(ratios) - 1, int(self.RATIO_QUANTILE * len(ratios)))] \
                if ratios else 3.0
        return self._ratios[direction]

    def translate(self, segments: list[str], direction: str) -> list[str]:
        from pipeline.generate import generate

        model, tok = self._load()
        prompts = self.prompts(segments, direction)
        ratio = self.ratio(direction, tok)
        budgets = [min(self.TOKEN_CAP, int(_n_tokens(tok, s) * ratio) + self.TOKEN_SLACK) for s in segments]
        texts = generate(model, tok, prompts, max_new_tokens=budgets, batch_size=self.batch_size,
                         stop_after_first_line=True, desc=f"llm-icl {direction}")
        return [first_line(t) for t in texts]


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def first_line(text: str) -> str:
    """The continuation up to its first newline (the ICL format puts one translation per line)."""
    return text.lstrip(" ").split("\n", 1)[0].strip()


class HubMt:
    """A transformers translation pipeline. `model` may contain {src}/{tgt} (ISO 639-1/3 codes,
    e.g. Helsinki-NLP/opus-mt-{src}-{tgt}); otherwise FLORES codes are passed as src_lang/tgt_lang
    (NLLB style)."""

    def __init__(self, spec: TranslatorSpec, pack: LanguagePack, *, batch_size: int = 8):
        self.spec, self.pack, self.batch_size = spec, pack, batch_size
        self._pipes: dict[str, object] = {}

    def _model_for(self, direction: str) -> str:
        lang = self.pack.bcp47.split("-")[0]
        src, tgt = ("en", lang) if direction == FORWARD else (lang, "en")
        return (self.spec.model or "").format(src=src, tgt=tgt)

    def available(self) -> tuple[bool, str]:
        if not self.spec.model:
            return False, "hub-mt translator has no model"
        models = {self._model_for(d) for d in DIRECTIONS}
        if all(Path(m).exists() for m in models):
            return True, ""
        if os.environ.get("POLYALIGN_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            return False, f"hub model {self.spec.model} needs a network (offline)"
        try:
            from huggingface_hub import model_info

            for m in models:
                if not Path(m).exists():
                    model_info(m, timeout=10)
        except Exception as exc:  # offline or unknown model: either way not usable
            return False, f"hub model {self.spec.model} not reachable ({type(exc).__name__})"
        return True, ""

    def system_id(self) -> str:
        return f"hub-mt:{self.spec.model}"

    def translate(self, segments: list[str], direction: str) -> list[str]:
        if direction not in self._pipes:
            from transformers import pipeline

            self._pipes[direction] = pipeline("translation", model=self._model_for(direction))
        pipe = self._pipes[direction]
        kwargs = {}
        if "{src}" not in (self.spec.model or ""):
            en, tgt = "eng_Latn", _flores(self.pack)
            kwargs = {"src_lang": en, "tgt_lang": tgt} if direction == FORWARD else {"src_lang": tgt, "tgt_lang": en}
        out = pipe(segments, batch_size=self.batch_size, **kwargs)
        return [o["translation_text"] for o in out]


class FileTranslator:
    """A repository TSV `source<TAB>translation` (both directions may share one file)."""

    def __init__(self, spec: TranslatorSpec, pack: LanguagePack):
        self.spec, self.pack = spec, pack

    def _path(self) -> Path:
        return safe_join(repo_root(), self.spec.path or "", file=f"languages/{self.pack.id}.yaml",
                         field="translators.path")

    def available(self) -> tuple[bool, str]:
        if not self.spec.path or not self._path().is_file():
            return False, f"translation file '{self.spec.path}' not found"
        return True, ""

    def system_id(self) -> str:
        return f"file:{self.spec.path}:{sha256_file(self._path())[:12]}"

    def translate(self, segments: list[str], direction: str) -> list[str]:
        table: dict[str, str] = {}
        with open(self._path(), encoding="utf-8", newline="") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 2:
                    table[" ".join(row[0].split())] = row[1]
        return [table.get(" ".join(s.split()), "") for s in segments]


BACKENDS = {"apertium": Apertium, "llm-icl": LlmIcl, "hub-mt": HubMt, "file": FileTranslator}


def backend_for(spec: TranslatorSpec, pack: LanguagePack):
    return BACKENDS[spec.kind](spec, pack)


def choose(pack: LanguagePack) -> tuple[object, list[str]]:
    """The first available backend of the pack's list, and why each earlier one was skipped."""
    skipped = []
    for spec in pack.translators:
        backend = backend_for(spec, pack)
        ok, why = backend.available()
        if ok:
            return backend, skipped
        skipped.append(f"{spec.kind}: {why}")
    raise PolyalignError(f"languages/{pack.id}.yaml", "translators", "no translator is available ("
                         + "; ".join(skipped or ["the list is empty"]) + ")",
                         "install one (e.g. an Apertium pair) or add `- kind: llm-icl`")


# --------------------------------------------------------------------------- the facade
@dataclass
class Translation:
    """Outputs aligned with the inputs; `ok[i]` False means outputs[i] must not be used."""

    outputs: list[str]
    ok: list[bool]
    failures: Counter = field(default_factory=Counter)  # kind -> count
    translated: int = 0  # segments sent to the backend (cache misses)
    cached: int = 0  # segments served from the cache


def default_lang_check(pack: LanguagePack) -> LangCheck:
    """LID through pipeline.text: the pack's identifier for the target, its family's for English."""

    def check(texts: list[str], lang: str) -> list[bool]:
        from pipeline.text import english_is, is_lang

        if lang == "tgt":
            return is_lang(texts, pack)
        return english_is(texts, "lid176" if pack.lid.model == "lid176" else "ntrex-fasttext")

    return check


def judge(sources: list[str], outputs: list[str], lang: str, check: LangCheck) -> tuple[list[bool], Counter]:
    """Which outputs are usable, and failure counts by kind ('empty', 'wrong_language').

    A non-empty source with an empty output is 'empty'; an output with at least
    MIN_LID_LETTERS letters that LID puts outside `lang` is 'wrong_language'.
    """
    ok, failures = [True] * len(outputs), Counter()
    judged = [i for i, o in enumerate(outputs) if letters(o) >= MIN_LID_LETTERS]
    verdict = dict(zip(judged, check([outputs[i] for i in judged], lang))) if judged else {}
    for i, (src, out) in enumerate(zip(sources, outputs)):
        if src.strip() and not out.strip():
            ok[i] = False
            failures["empty"] += 1
        elif not verdict.get(i, True):
            ok[i] = False
            failures["wrong_language"] += 1
    return ok, failures


class Translator:
    """The pack's chosen translator with a cache and failure accounting."""

    def __init__(self, pack: LanguagePack, backend=None, *, lang_check: LangCheck | None = None,
                 cache_root: Path | None = None):
        self.pack = pack
        self.skipped: list[str] = []
        if backend is None:
            backend, self.skipped = choose(pack)
        self.backend = backend
        self.system = backend.system_id()
        self.cache = Cache(self.system, cache_root)
        self.lang_check = lang_check or default_lang_check(pack)

    def translate(self, texts: list[str], direction: str) -> Translation:
        """Translate whole texts (multi-line allowed) in one direction; judge every output."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        segments = list(dict.fromkeys(s for t in texts for s in segments_of(t)))
        done = self.cache.get_many(direction, segments)
        missing = [s for s in segments if s not in done]
        if missing:
            new = dict(zip(missing, self.backend.translate(missing, direction)))
            self.cache.put_many(direction, new)
            done.update(new)
        outputs = [reassemble(t, done) for t in texts]
        ok, failures = judge(texts, outputs, "tgt" if direction == FORWARD else "en", self.lang_check)
        return Translation(outputs, ok, failures, translated=len(missing), cached=len(segments) - len(missing))
