"""Translation evaluation: sacrebleu scores, a per-sentence error taxonomy, domain similarity, COMET.

Pure functions over lists of strings; the `mt_errors@<lang>` stage feeds them.

- Scores: sacrebleu BLEU, chrF++ (chrF with word_order=2) and TER with their signatures; the
  corpus score is recomputed from sacrebleu's per-sentence sufficient statistics on resamples of
  whole documents (sentences of one article are not independent), for intervals and for paired
  system-vs-baseline deltas (pipeline.stats.corpus_ci / corpus_delta).
- Taxonomy: one boolean (or None = not applicable) per error type and sentence; a sentence's
  *primary* error is the first that fires in `ERROR_TYPES` order, so primary shares add up to
  the share of sentences with any error (what the stacked bars in the report show).
- Domain similarity: Jensen–Shannon divergence of token-unigram distributions, with the
  corpus subsampled to the test set's size so corpora (and packs) of different sizes compare.
  Khiu et al.'s question (does similarity predict quality?) is asked per test document within
  a pack (n = documents) and pooled across packs by Fisher z; under MIN_CORR_POINTS points a
  correlation is not reported.
- COMET: the real unbabel-comet path (`load_from_checkpoint`, `predict(gpus=0)`) for a
  user-configured checkpoint; its encoder's language coverage is read from the installed
  package's own documentation, not from a hand-typed table.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import regex
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

from pipeline import stats

# --------------------------------------------------------------------------- corpus scores
METRICS = ("bleu", "chrf++", "ter")
HIGHER_IS_BETTER = {"bleu": True, "chrf++": True, "ter": False, "comet": True}

# Scripts written without spaces between words: 13a would score whole clauses as one token.
_CHAR_TOKENIZED = {"Thai", "Laoo", "Khmr", "Mymr", "Tibt", "Jpan", "Kore", "Hira", "Kana"}
_ZH = {"Hans", "Hant", "Hani"}


def bleu_tokenizer(script: str) -> str:
    """sacrebleu tokenizer for a target script: 'zh' for Han, 'char' for unspaced scripts, else '13a'.

    flores200's SentencePiece would suit every script but downloads its model (docs/offline-assets.md).
    """
    return "zh" if script in _ZH else "char" if script in _CHAR_TOKENIZED else "13a"


def make_metrics(script: str = "Latn") -> dict:
    """Fresh sacrebleu metric objects; names are our row names."""
    return {"bleu": BLEU(tokenize=bleu_tokenizer(script)), "chrf++": CHRF(word_order=2), "ter": TER()}


def corpus_scores(hyps: Sequence[str], refs: Sequence[str], script: str = "Latn") -> dict[str, dict]:
    """{metric: {"score", "signature"}} for one system against one reference stream."""
    out = {}
    for name, metric in make_metrics(script).items():
        score = metric.corpus_score(list(hyps), [list(refs)])
        out[name] = {"score": float(score.score), "signature": str(metric.get_signature())}
    return out


def doc_scores(systems: dict[str, Sequence[str]], refs: Sequence[str], docs: Sequence, *,
               script: str = "Latn", n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Corpus BLEU, chrF++ and TER of every system with an interval from resampling whole documents.

    docs: [n] document id of each sentence (the unit the test set was sampled in). Returns
    {system: {metric: {score, ci_low, ci_high, signature, stats [n, k], score_fn}}}; the score
    equals sacrebleu's corpus score (the sufficient statistics are sacrebleu's, summed), and
    `stats`/`score_fn` feed stats.corpus_delta for paired system-vs-baseline intervals.
    """
    out: dict[str, dict[str, dict]] = {}
    for name, hyps in systems.items():
        out[name] = {}
        for metric, obj in make_metrics(script).items():
            per_sent, score_fn = stats.sacrebleu_stats(obj, hyps, refs)
            est, lo, hi = stats.corpus_ci(score_fn, per_sent, docs, n_boot=n_boot, seed=seed)
            out[name][metric] = {"score": est, "ci_low": lo, "ci_high": hi, "signature": str(obj.get_signature()),
                                 "stats": per_sent, "score_fn": score_fn}
    return out


def doc_delta(a: dict, b: dict, docs: Sequence, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(score_a - score_b, low, high) of one metric (entries of doc_scores), documents resampled whole."""
    return stats.corpus_delta(a["score_fn"], a["stats"], b["stats"], docs, n_boot=n_boot, seed=seed)


def strongest(scores: dict[str, dict], names: Sequence[str], metric: str) -> str:
    """The best of `names` on `metric` (highest, or lowest for TER): the baseline a system must beat."""
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(names, key=lambda n: sign * scores[n][metric]["score"])


def sentence_chrf(hyp: str, ref: str) -> float:
    """chrF++ of one sentence (0..100)."""
    return float(sacrebleu.sentence_chrf(hyp, [ref], word_order=2).score)


# --------------------------------------------------------------------------- scripts and tokens
# ISO 15924 codes that name a combination of Unicode scripts.
_COMPOSITE = {"Jpan": ("Hira", "Kana", "Hani"), "Kore": ("Hang", "Hani"), "Hans": ("Hani",), "Hant": ("Hani",),
              "Hrkt": ("Hira", "Kana")}
_WORD = regex.compile(r"\w+")


def script_share(text: str, script: str) -> float | None:
    """Share of the letters of `text` in ISO 15924 `script` (None if it has no letters)."""
    letters = [ch for ch in text if unicodedata.category(ch).startswith("L")]
    if not letters:
        return None
    pattern = regex.compile("|".join(rf"\p{{sc={s}}}" for s in _COMPOSITE.get(script, (script,))))
    return sum(bool(pattern.match(ch)) for ch in letters) / len(letters)


def tokens(text: str) -> list[str]:
    """Lower-cased Unicode word tokens (the `regex` module's \\w keeps combining marks inside words)."""
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def numbers(text: str) -> Counter:
    """Multiset of the numbers in `text`, digits of any script mapped to 0-9, separators dropped.

    '1,000' and '1.000' and '१,०००' all give '1000'; '3.5' and '3,5' both give '35', so decimal
    comma/point conventions do not count as mismatches.
    """
    ascii_digits = "".join(str(unicodedata.digit(ch)) if ch.isdigit() else ch for ch in text)
    found = re.findall(r"\d+(?:[.,\u00a0\u202f ]\d{3})*(?:[.,]\d+)?", ascii_digits)
    return Counter(re.sub(r"\D", "", n).lstrip("0") or "0" for n in found)


# --------------------------------------------------------------------------- error taxonomy
ERROR_TYPES = ("empty", "copy", "off_target", "script", "repetition", "overgenerated", "truncated", "number",
               "entity")
ERROR_DOC = {
    "empty": "no output",
    "copy": "untranslated: chrF++ of the output against the source >= copy_chrf and above its chrF++ "
            "against the reference",
    "off_target": "the pack's language identifier says the output is not in the target language",
    "script": "under script_min of the output's letters are in the target script (Unicode script property)",
    "repetition": "generation loop: a word n-gram (n <= 6) 4 times in a row, or a >= 6-character span "
                  "3 times in a row",
    "overgenerated": "output longer than over_ratio x the reference (characters, spaces excluded)",
    "truncated": "output shorter than trunc_ratio x the reference (characters, spaces excluded)",
    "number": "a number shared by source and reference is missing from the output, or the output has "
              "a number found in neither (digits of any script, separators ignored)",
    "entity": "a capitalised non-initial source token or acronym that the reference keeps verbatim is "
              "missing from the output (prefix match); only where source and target share a cased script "
              "and the reference keeps such a token",
}

# Defaults measured on NTREX-128 (every 2nd sentence, n=999): the second human Spanish
# translation scored against the first as if it were system output gets 0.0% copy, loop,
# over/under-length, 0.2% number and 0.5% entity flags; its length ratio to the first stays
# within 0.74-1.16. Human translations with chrF++ against the English source >= 55: at most
# 1.0% in glg, nya, npi, hau, yor, amh, eus, spa, por, fra (and those are mostly names or
# numbers, which the "closer to the source than to the reference" condition clears).
THRESHOLDS = {"copy_chrf": 55.0, "script_min": 0.5, "over_ratio": 2.0, "trunc_ratio": 0.5}
_LOOP = regex.compile(r"(\S{6,}?)\1{2,}")
_CASED = {"Latn", "Cyrl", "Grek", "Armn"}


def is_copy(src: str, hyp: str, ref: str, threshold: float = THRESHOLDS["copy_chrf"]) -> bool:
    """Untranslated: the output is closer to the source than to the reference, and close to it."""
    to_src = sentence_chrf(hyp, src)
    return to_src >= threshold and to_src > sentence_chrf(hyp, ref)  # short-circuit: most outputs stop here


def has_loop(hyp: str, max_n: int = 6, repeats: int = 4) -> bool:
    """A generation loop: a word n-gram (n <= max_n) `repeats` times in a row, or a span of >= 6
    characters with a letter 3 times in a row (scripts without spaces).

    Word level, because Bantu reduplication ('mwadzidzidzi', 'mndandanda': 1.3% of NTREX
    Chichewa references) repeats short character units inside one word.
    """
    toks = tokens(hyp)
    for n in range(1, max_n + 1):
        for i in range(len(toks) - n * repeats + 1):
            unit = toks[i:i + n]
            if all(toks[i + j * n:i + (j + 1) * n] == unit for j in range(1, repeats)):
                return True
    return any(regex.search(r"\p{L}", m.group(1)) for m in _LOOP.finditer(hyp))


def length_ratio(hyp: str, ref: str) -> float:
    """Non-space characters of the output over those of the reference."""
    ref_len = len("".join(ref.split()))
    return len("".join(hyp.split())) / max(ref_len, 1)


def entities(src: str) -> list[str]:
    """Named-entity candidates of a cased-script sentence.

    Heuristic: tokens that start with an upper-case letter
    and are not sentence-initial (not first, not after . ! ? : or an opening quote), plus
    all-caps acronyms anywhere; 'I' is excluded. Cheap and language-agnostic; it misses
    lower-case entities and counts capitalised common nouns (German-style) as entities.
    """
    words = regex.findall(r"[\p{L}\p{M}][\p{L}\p{M}'’-]*|[.!?:\"“«]", src)
    out, initial = [], True
    for word in words:
        if word in {".", "!", "?", ":", '"', "“", "«"}:
            initial = True
            continue
        clean = word.rstrip("'’").removesuffix("'s").removesuffix("’s")
        acronym = clean.isupper()
        if len(clean) > 1 and clean[0].isupper() and (acronym or not initial):
            out.append(clean)
        initial = False
    return out


def kept_entities(src: str, ref: str) -> list[str]:
    """Source entities that the human reference keeps verbatim (prefix match tolerates inflection).

    Measured on NTREX: 28-48% of Latin-script human translations "miss" some capitalised
    source token (days, months, nationalities and exonyms are translated: Monday -> luns,
    London -> Londres), so the raw check mostly measures English capitalisation. Restricting
    to the entities the reference keeps asks only what a translator would not change.
    """
    return [ent for ent in entities(src) if _contains(ref, ent)]


def _contains(text: str, ent: str) -> bool:
    stem = ent.lower() if len(ent) < 5 else ent.lower()[: max(4, len(ent) - 2)]
    return stem in text.lower()


def entity_missing(src: str, hyp: str, ref: str) -> bool | None:
    """Some source entity kept by the reference is absent from the output (None: no such entity)."""
    kept = kept_entities(src, ref)
    return None if not kept else not all(_contains(hyp, ent) for ent in kept)


def number_mismatch(src: str, hyp: str, ref: str) -> bool:
    """The output drops a number that source and reference share, or adds one found in neither.

    Numbers the reference spells out or converts (yor: 13% of NTREX sentences differ from
    the English digits) are not held against the output.
    """
    s, h, r = numbers(src), numbers(hyp), numbers(ref)
    return bool((s & r) - h) or bool(set(h) - set(s) - set(r))


def sentence_errors(src: str, hyp: str, ref: str, *, on_target: bool | None, src_script: str, tgt_script: str,
                    thresholds: dict | None = None) -> dict[str, bool | None]:
    """Every ERROR_TYPES flag for one output (None = not applicable or unknown)."""
    t = THRESHOLDS | (thresholds or {})
    if not hyp.strip():
        return {name: name == "empty" for name in ERROR_TYPES}
    share = script_share(hyp, tgt_script)
    same_cased = src_script == tgt_script and src_script in _CASED
    ratio = length_ratio(hyp, ref)
    return {
        "empty": False,
        "copy": is_copy(src, hyp, ref, t["copy_chrf"]),
        "off_target": None if on_target is None else not on_target,
        "script": None if share is None else share < t["script_min"],
        "repetition": has_loop(hyp),
        "overgenerated": ratio > t["over_ratio"],
        "truncated": ratio < t["trunc_ratio"],
        "number": number_mismatch(src, hyp, ref),
        "entity": entity_missing(src, hyp, ref) if same_cased else None,
    }


def primary_error(flags: dict[str, bool | None]) -> str:
    """The first error type that fires, in ERROR_TYPES order; 'ok' when none does."""
    return next((name for name in ERROR_TYPES if flags.get(name)), "ok")


def error_rates(all_flags: list[dict[str, bool | None]]) -> dict[str, dict]:
    """Per type: rate over the sentences where it applies, n applicable, and the primary share."""
    n = len(all_flags)
    primary = Counter(primary_error(f) for f in all_flags)
    out = {}
    for name in ERROR_TYPES:
        known = [bool(f[name]) for f in all_flags if f.get(name) is not None]
        out[name] = {"rate": sum(known) / len(known) if known else None, "n": len(known),
                     "primary_share": primary[name] / n if n else None}
    out["any"] = {"rate": 1 - primary["ok"] / n if n else None, "n": n,
                  "primary_share": 1 - primary["ok"] / n if n else None}
    return out


# --------------------------------------------------------------------------- domain similarity
def unigrams(lines: Sequence[str]) -> Counter:
    return Counter(tok for line in lines for tok in tokens(line))


def jensen_shannon(p: Counter, q: Counter) -> float:
    """Jensen–Shannon divergence in bits (0 = same distribution, 1 = disjoint supports)."""
    sp, sq = sum(p.values()), sum(q.values())
    if not sp or not sq:
        return float("nan")

    def term(tok) -> float:
        a, b = p.get(tok, 0) / sp, q.get(tok, 0) / sq
        m = (a + b) / 2
        return (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    # fsum: the exactly rounded sum, whatever order the set of types is iterated in (that order
    # follows Python's per-process string hashing, so a plain sum changed its last bits run to run)
    return math.fsum(term(tok) for tok in p.keys() | q.keys()) / 2


def sample_tokens(lines: Sequence[str], budget: int, seed: int) -> Counter:
    """Unigrams of randomly ordered lines, stopping once `budget` tokens are collected."""
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    out, used = Counter(), 0
    for i in order:
        toks = tokens(lines[i])
        out.update(toks)
        used += len(toks)
        if used >= budget:
            break
    return out


def domain_divergence(corpus: Sequence[str], test: Sequence[str], *, samples: int = 20) -> dict:
    """JSD between a corpus and the test set on token unigrams, the corpus subsampled to the test size.

    JSD between finite samples grows as samples shrink (unseen types), so a corpus of 2M
    tokens and one of 20k are only comparable at equal sample sizes. The interval is the
    2.5–97.5% range over `samples` seeded subsamples: corpus-sampling spread, not test-set
    uncertainty. `complete` is False when the corpus is smaller than the test set.
    """
    test_counts = unigrams(test)
    budget = sum(test_counts.values())
    corpus_size = sum(len(tokens(line)) for line in corpus)
    values = sorted(jensen_shannon(sample_tokens(corpus, budget, seed), test_counts) for seed in range(samples))
    lo, hi = values[int(0.025 * (samples - 1))], values[math.ceil(0.975 * (samples - 1))]
    return {"jsd": sum(values) / len(values), "ci_low": lo, "ci_high": hi, "test_tokens": budget,
            "corpus_tokens": corpus_size, "complete": corpus_size >= budget}


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r, None when fewer than 3 points or a constant side."""
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    return pearson(ranks(list(x)), ranks(list(y))) if len(x) >= 3 else None


MIN_CORR_POINTS = 10  # fewer points: a correlation's 95% interval spans most of [-1, 1] (n=9: ±0.6 at r=0)


def doc_divergence(corpus: Sequence[str], doc_lines: dict[object, list[str]], *, samples: int = 5) -> dict:
    """{doc: mean JSD(corpus subsampled to the document's token count, the document)} per test
    document (`samples` seeded subsamples each; see domain_divergence for why equal sizes)."""
    out = {}
    for doc, lines in doc_lines.items():
        counts = unigrams(lines)
        budget = sum(counts.values())
        out[doc] = sum(jensen_shannon(sample_tokens(corpus, budget, seed), counts) for seed in range(samples)) / samples
    return out


def correlation_ci(x: Sequence[float], y: Sequence[float], alpha: float = 0.05) -> dict | None:
    """Pearson r over paired points with its Fisher-z interval; None under MIN_CORR_POINTS points
    or with a constant side. Returns {r, ci_low, ci_high, n, z, se} (z, se feed pooled_correlation)."""
    r = pearson(x, y) if len(x) >= MIN_CORR_POINTS else None
    if r is None:
        return None
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), 1 / math.sqrt(len(x) - 3)
    return _z_interval(z, se, len(x), alpha)


def pooled_correlation(parts: Sequence[dict], alpha: float = 0.05) -> dict | None:
    """Fixed-effect pool of per-pack correlations (entries of correlation_ci): the inverse-variance
    mean of Fisher z (weights n - 3); None when no part has enough points."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    weights = [1 / p["se"] ** 2 for p in parts]
    z = sum(w * p["z"] for w, p in zip(weights, parts)) / sum(weights)
    return _z_interval(z, 1 / math.sqrt(sum(weights)), sum(p["n"] for p in parts), alpha)


def _z_interval(z: float, se: float, n: int, alpha: float) -> dict:
    q = NormalDist().inv_cdf(1 - alpha / 2)
    return {"r": math.tanh(z), "ci_low": math.tanh(z - q * se), "ci_high": math.tanh(z + q * se), "n": n,
            "z": z, "se": se}


# --------------------------------------------------------------------------- COMET
COMET_NOT_COMPARABLE = "raw COMET is not comparable across languages; compare systems within a language"


@functools.cache
def comet_languages() -> frozenset[str]:
    """Language subtags the COMET (XLM-R) encoder covers, from the installed unbabel-comet's README."""
    import langcodes

    try:
        text = importlib.metadata.distribution("unbabel-comet").read_text("METADATA") or ""
    except importlib.metadata.PackageNotFoundError:
        return frozenset()
    found = re.search(r"cover the following languages:\s*(.+?)\n", text)
    if not found:
        return frozenset()
    codes = set()
    for name in found.group(1).split(","):
        try:
            codes.add(langcodes.find(name.strip().rstrip(".")).language)
        except LookupError:  # 'Western, Frisian' is split by a comma in the README; 'Frisian' still matches
            continue
    return frozenset(codes)


def comet_covers(bcp47: str) -> bool | None:
    """Whether XLM-R covers a language (macrolanguage-aware: npi -> ne); None if unknown."""
    import langcodes

    covered = comet_languages()
    if not covered:
        return None
    return langcodes.Language.get(langcodes.standardize_tag(bcp47, macro=True)).language in covered


@functools.cache
def _comet_model(checkpoint: str):
    from comet import load_from_checkpoint

    # COMET checkpoints are pickles: only user-configured, trusted files reach this point.
    return load_from_checkpoint(checkpoint)


def comet_scores(checkpoint: str | Path, src: Sequence[str], hyps: Sequence[str], refs: Sequence[str], *,
                 batch_size: int = 8) -> tuple[float, list[float]]:
    """(system score, segment scores) from a local COMET checkpoint on CPU."""
    model = _comet_model(str(Path(checkpoint).resolve()))
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(src, hyps, refs)]
    pred = model.predict(data, batch_size=batch_size, gpus=0, progress_bar=False, num_workers=0)
    return float(pred.system_score), [float(x) for x in pred.scores]
