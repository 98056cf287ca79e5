"""Language-adaptive fine-tuning (Alabi et al., COLING 2022): corpus cleaning, temperature
sampling across languages, tokenizer statistics and tokenizer-independent bits per byte.

Pure functions only; the stages (`stages/laft.py`, `stages/maft.py`, `stages/laft_eval.py`)
do the reading, training and writing.

Cleaning follows MAFT's recipe: NFC (with single spaces), drop lines that contain no letter
(only numbers, punctuation or symbols), drop lines shorter than `min_tokens` whitespace
tokens, drop exact duplicates (first occurrence kept). Tokens are whitespace tokens, so the
rule is the same for every tokenizer; it assumes a script written with spaces between words
(all default packs are). A pack in a script written without spaces (Han, Thai, ...) would
lose most lines to it: lower `laft.min_tokens` for such a pack.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline import io
from pipeline.paths import repo_root
from pipeline.stats import bootstrap_ratio_ci
from pipeline.text import normalise

# 6 whitespace tokens: the MAFT threshold (Alabi et al. 2022, sec. 3); on the default packs it
# drops UDHR headings ("Article 12") and Bible chapter titles, and almost no NTREX sentence.
MIN_TOKENS = 6
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece byte-fallback piece, e.g. <0xE2>


# --------------------------------------------------------------------------- cleaning
def has_letter(line: str) -> bool:
    """True if any character is a Unicode letter (category L*); digits, punctuation,
    symbols and marks alone do not count."""
    return any(unicodedata.category(ch).startswith("L") for ch in line)


def clean_lines(lines: Sequence[str], *, min_tokens: int = MIN_TOKENS) -> tuple[list[str], dict[str, int]]:
    """MAFT cleaning. Returns (kept lines in input order, counts of what was dropped and why)."""
    kept, seen = [], set()
    stats = {"lines_in": 0, "dropped_empty": 0, "dropped_no_letters": 0, "dropped_short": 0,
             "dropped_duplicate": 0}
    for raw in lines:
        stats["lines_in"] += 1
        line = normalise(raw)
        if not line:
            stats["dropped_empty"] += 1
        elif not has_letter(line):
            stats["dropped_no_letters"] += 1
        elif len(line.split()) < min_tokens:
            stats["dropped_short"] += 1
        elif line in seen:
            stats["dropped_duplicate"] += 1
        else:
            seen.add(line)
            kept.append(line)
    stats["lines_kept"] = len(kept)
    return kept, stats


def read_target_text(data_dir: Path) -> list[str]:
    """The pack's monolingual TRAIN text: `tgt` of data/<L>/train.jsonl (NTREX train documents)
    then data/<L>/mono_train.txt (UDHR, Bible, ... one line each). Never dev or test."""
    lines = [row["tgt"] for row in io.read_jsonl(Path(data_dir) / "train.jsonl")]
    mono = Path(data_dir) / "mono_train.txt"
    if mono.exists():
        lines += mono.read_text(encoding="utf-8").splitlines()
    return lines


def target_corpus(data_dir: Path, *, min_tokens: int = MIN_TOKENS) -> tuple[list[str], dict[str, int]]:
    """Cleaned training lines of one language, with cleaning counts and UTF-8 bytes kept."""
    kept, stats = clean_lines(read_target_text(data_dir), min_tokens=min_tokens)
    stats["bytes_kept"] = sum(utf8_bytes(line) for line in kept)
    return kept, stats


def corpus_path(lang: str) -> Path:
    """data/_mono/<lang>.txt: the cleaned training text laft_corpus@<lang> writes for laft and maft.

    A folder of its own (not data/<lang>/) so that `maft` can depend on exactly these files:
    DVC cannot list `${languages}` in deps, and depending on all of data/ would tie maft to
    every stage that writes there (taco_data, rm_transfer, culture_augment)."""
    return repo_root() / "data" / "_mono" / f"{lang}.txt"


def read_corpus(lang: str) -> list[str]:
    path = corpus_path(lang)
    if not path.exists():
        from pipeline.errors import PolyalignError

        raise PolyalignError(path, "(file)", "cleaned training text missing", f"run `dvc repro laft_corpus@{lang}`")
    return path.read_text(encoding="utf-8").splitlines()


def shuffled(lines: Sequence[str], seed: int) -> list[str]:
    out = list(lines)
    random.Random(seed).shuffle(out)
    return out


# --------------------------------------------------------------------------- temperature sampling
def temperature_probs(sizes: dict[str, int], temperature: float) -> dict[str, float]:
    """p_i ∝ n_i^(1/T) over languages (XLM-R / mT5 sampling; T=1 is proportional, T→∞ uniform)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    weights = {k: float(n) ** (1.0 / temperature) if n > 0 else 0.0 for k, n in sizes.items()}
    total = sum(weights.values())
    if total == 0:
        raise ValueError("every language is empty")
    return {k: w / total for k, w in weights.items()}


def allocate(probs: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total`, proportional to `probs` (largest remainder)."""
    exact = {k: p * total for k, p in probs.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def draw(pool: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """`count` lines from `pool`: whole shuffled passes, then a shuffled partial pass, so a small
    language is repeated evenly (upsampled) and a large one is subsampled without repeats."""
    out: list[str] = []
    while len(out) < count and pool:
        epoch = list(pool)
        rng.shuffle(epoch)
        out += epoch[: count - len(out)]
    return out


def temperature_sample(pools: dict[str, Sequence[str]], total: int, temperature: float, *,
                       seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """A shuffled multilingual sample of `total` lines, language i drawn with p_i ∝ n_i^(1/T).

    Returns ([{"lang", "text"}], counts per language)."""
    counts = allocate(temperature_probs({k: len(v) for k, v in pools.items()}, temperature), total)
    rng = random.Random(seed)
    sample = [{"lang": k, "text": t} for k in sorted(pools) for t in draw(pools[k], counts[k], rng)]
    rng.shuffle(sample)
    return sample, counts


# --------------------------------------------------------------------------- tokenizer statistics
def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def is_byte_piece(token: str) -> bool:
    return bool(BYTE_PIECE.match(token))


# tokenizer_stats' figures that compare a language with English (not a method with a baseline),
# each with whether higher is better
TOKENIZER_METRICS = {"fertility": False, "chars_per_token": True, "byte_fallback_share": False}


def tokenizer_stats(tok, texts: Sequence[str]) -> dict[str, float]:
    """Fertility (tokens per whitespace word), characters per token and byte-fallback share
    (share of tokens that are <0xNN> byte pieces), summed over `texts`, special tokens excluded."""
    n_tok = n_words = n_chars = n_bytes = n_fallback = 0
    for text in texts:
        pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
        n_tok += len(pieces)
        n_fallback += sum(is_byte_piece(p) for p in pieces)
        n_words += len(text.split())
        n_chars += len(text)
        n_bytes += utf8_bytes(text)
    return {"tokens": n_tok, "words": n_words, "chars": n_chars, "bytes": n_bytes,
            "fertility": n_tok / max(n_words, 1), "chars_per_token": n_chars / max(n_tok, 1),
            "byte_fallback_share": n_fallback / max(n_tok, 1)}


# --------------------------------------------------------------------------- bits per byte
def by_document(docs: Sequence[str], values: Sequence[float]) -> tuple[list[str], np.ndarray]:
    """Sum per-line `values` (shape [n_lines]) per document; documents in first-seen order.
    Returns (doc ids, sums of shape [n_docs])."""
    order: dict[str, int] = {}
    for d in docs:
        order.setdefault(d, len(order))
    sums = np.zeros(len(order))
    np.add.at(sums, [order[d] for d in docs], np.asarray(values, dtype=float))
    return list(order), sums


def bits_per_byte(bits: Sequence[float], nbytes: Sequence[float], *, seed: int = 0) -> tuple[float, float, float]:
    """sum(bits)/sum(bytes) with a 95% bootstrap CI over documents.

    bits, nbytes: shape [n_docs], total NLL in bits and UTF-8 bytes of each held-out document.
    Bits per byte does not depend on the tokenizer: a model that splits text into more tokens
    pays for every one of them in the numerator, while the denominator is fixed by the text."""
    return bootstrap_ratio_ci(bits, nbytes, seed=seed)


def delta_bits_per_byte(bits_a: Sequence[float], bits_b: Sequence[float], nbytes: Sequence[float], *,
                        seed: int = 0) -> tuple[float, float, float]:
    """bpb(a) - bpb(b) on the same documents, with a paired bootstrap CI over documents.

    Both models score the same bytes, so the difference is sum(bits_a - bits_b)/sum(bytes);
    resampling documents once for both keeps the pairing. Shapes [n_docs]."""
    diff = np.asarray(bits_a, dtype=float) - np.asarray(bits_b, dtype=float)
    return bootstrap_ratio_ci(diff, nbytes, seed=seed)


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)
