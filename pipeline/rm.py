"""Reward-model transfer (Wu et al. 2024, "Reuse Your Rewards"): pairs, splits, probes, selection.

Pure functions: parsing preference data into pairs, a grouped deterministic split,
rendering the reward model's input text, and the math behind every number `rm_train`
and `rm_transfer@<lang>` report (pairwise accuracy, length baseline, language-consistency
probe, best-of-n selection judged by another RM, matched training compute). The last section
holds what both stages share about where reward models live and how they are loaded (lazy
imports), so neither stage imports the other.

A pair is a dict: ``{"id": str, "turns": [[role, text], ...], "chosen": str, "rejected": str}``
where ``turns`` is the dialogue before the final assistant reply (it ends with a Human turn).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HUMAN, ASSISTANT = "Human", "Assistant"
TURN = re.compile(r"\n\n(Human|Assistant):")
RM_TEMPLATE_ID = "rm_dialogue_v1"  # the reward model's input: hh-rlhf's own "\n\nHuman: …\n\nAssistant: …"


# --------------------------------------------------------------------------- parsing
def split_turns(text: str) -> list[list[str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [["Human", "a"], ["Assistant", "b"]] (text stripped).

    Text before the first role marker (hh-rlhf has none) is dropped.
    """
    parts = TURN.split(text)
    return [[parts[i], parts[i + 1].strip()] for i in range(1, len(parts) - 1, 2)]


def parse_hh(record: dict, *, context_turns: int | None = 1) -> dict | None:
    """One hh-rlhf record {"chosen": dialogue, "rejected": dialogue} -> a pair, or None.

    Both dialogues must share every turn but the last, and end in an Assistant turn with
    different, non-empty replies; otherwise the record is not a preference pair (None).
    `context_turns` keeps the last k Human turns of the context (None keeps all): the
    final exchange carries the preference and short inputs keep CPU training affordable.
    """
    chosen, rejected = split_turns(record.get("chosen", "")), split_turns(record.get("rejected", ""))
    if not chosen or not rejected or chosen[:-1] != rejected[:-1]:
        return None
    (role_c, reply_c), (role_r, reply_r) = chosen[-1], rejected[-1]
    context = chosen[:-1]
    if role_c != ASSISTANT or role_r != ASSISTANT or not context or context[-1][0] != HUMAN:
        return None
    if not reply_c or not reply_r or reply_c == reply_r:
        return None
    turns = trim_context(context, context_turns)
    return {"id": pair_id(turns, reply_c, reply_r), "turns": turns, "chosen": reply_c, "rejected": reply_r}


def parse_fields(record: dict, *, prompt: str = "prompt", chosen: str = "chosen",
                 rejected: str = "rejected") -> dict | None:
    """A flat record {prompt, chosen, rejected} (UltraFeedback-style binarised sets) -> a pair, or None."""
    p, c, r = (str(record.get(k) or "").strip() for k in (prompt, chosen, rejected))
    if not p or not c or not r or c == r:
        return None
    turns = [[HUMAN, p]]
    return {"id": pair_id(turns, c, r), "turns": turns, "chosen": c, "rejected": r}


def trim_context(turns: list[list[str]], context_turns: int | None) -> list[list[str]]:
    """The suffix of `turns` that starts at the k-th last Human turn (all turns when k is None)."""
    if context_turns is None:
        return [list(t) for t in turns]
    humans = [i for i, (role, _) in enumerate(turns) if role == HUMAN]
    start = humans[-context_turns] if len(humans) >= context_turns else 0
    return [list(t) for t in turns[start:]]


def parse_pairs(records: Sequence[dict], *, parser: str = "hh", context_turns: int | None = 1,
                max_chars: int | None = None) -> tuple[list[dict], dict]:
    """Parse records into unique pairs; returns (pairs, counts of what was dropped and why).

    `max_chars` drops pairs whose longer rendered input exceeds it (instead of truncating,
    which could cut away the only difference between the replies).
    """
    counts = {"records": len(records), "unparsable": 0, "duplicate": 0, "too_long": 0}
    seen, pairs = set(), []
    for record in records:
        pair = parse_hh(record, context_turns=context_turns) if parser == "hh" else parse_fields(record)
        if pair is None:
            counts["unparsable"] += 1
        elif pair["id"] in seen:
            counts["duplicate"] += 1
        elif max_chars and max(len(rm_text(pair["turns"], pair[k])) for k in ("chosen", "rejected")) > max_chars:
            counts["too_long"] += 1
        else:
            seen.add(pair["id"])
            pairs.append(pair)
    counts["pairs"] = len(pairs)
    return pairs, counts


def pair_id(turns: list[list[str]], chosen: str, rejected: str) -> str:
    """Stable 16-hex id from the pair's content (same pair, same id, on every machine)."""
    blob = "\x1e".join([f"{r}\x1f{t}" for r, t in turns] + [chosen, rejected])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- rendering
def render_turns(turns: list[list[str]]) -> str:
    """[["Human", "a"], ["Assistant", "b"]] -> '\\n\\nHuman: a\\n\\nAssistant: b' (hh-rlhf layout)."""
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


def rm_text(turns: list[list[str]], response: str) -> str:
    """The reward model's input for `response` to the dialogue `turns` (template rm_dialogue_v1).

    The role markers stay English in every language: they are format, not content, and the
    same markers for source and target keep zero-shot transfer a test of the content.
    """
    return render_turns([*turns, [ASSISTANT, response]])


def training_pairs(pairs: Sequence[dict]) -> list[dict]:
    """Pairs -> the {"chosen": text, "rejected": text} inputs of `train_reward_model`."""
    return [{"chosen": rm_text(p["turns"], p["chosen"]), "rejected": rm_text(p["turns"], p["rejected"])}
            for p in pairs]


def last_human(turns: list[list[str]]) -> str:
    """The final user message of a dialogue (the instruction best-of-n answers)."""
    return next(text for role, text in reversed(turns) if role == HUMAN)


# --------------------------------------------------------------------------- splitting
def group_key(pair: dict) -> str:
    """Pairs that open with the same user message share a group (hh-rlhf repeats openings:
    2,178 distinct first messages among 2,312 records), so no opening straddles two splits."""
    first = next(text for role, text in pair["turns"] if role == HUMAN)
    return " ".join(first.lower().split())


def _unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from `key` and `seed` (stable across machines and Python runs)."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: Sequence[dict], fractions: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    """Assign each group to a split by a seeded hash of its key, in the order of `fractions`.

    Hashing (rather than shuffling) keeps a pair's split fixed when records are added or
    reordered; the sizes match `fractions` up to sampling noise (e.g. 80/10/10 on 2,312
    records gives ±~15 pairs around 231 in test). Within a split, input order is kept.
    """
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative with a positive sum: {fractions}")
    bounds = np.cumsum([f / total for f in fractions.values()])
    names = list(fractions)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for pair in pairs:
        u = _unit_hash(group_key(pair), seed)
        out[names[min(int(np.searchsorted(bounds, u, side="right")), len(names) - 1)]].append(pair)
    return out


# --------------------------------------------------------------------------- translation
def translate_pairs(pairs: Sequence[dict], translate: Callable[[list[str]], list[str | None]]) -> tuple[list[dict], int]:
    """Translate every text of every pair with one batched call over the distinct strings.

    `translate(texts: list[str]) -> list[str | None]` (same length; None marks a failed
    translation). A pair with any failed text is dropped, never kept half-translated;
    returns (translated pairs, number dropped). Ids stay those of the source pairs, so a
    translated pair lines up with its original.
    """
    texts = sorted({t for p in pairs for t in (*(text for _, text in p["turns"]), p["chosen"], p["rejected"])})
    got = translate(texts) if texts else []
    if len(got) != len(texts):
        raise ValueError(f"translator returned {len(got)} texts for {len(texts)}")
    table = dict(zip(texts, got))
    out = []
    for p in pairs:
        new = {"id": p["id"], "turns": [[role, table[text]] for role, text in p["turns"]],
               "chosen": table[p["chosen"]], "rejected": table[p["rejected"]]}
        values = [text for _, text in new["turns"]] + [new["chosen"], new["rejected"]]
        if all(v is not None and v.strip() for v in values) and new["chosen"] != new["rejected"]:
            out.append(new)
    return out, len(pairs) - len(out)


# --------------------------------------------------------------------------- scoring math
def score_pairs(score: Callable[[list[str]], list[float]], pairs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(chosen scores [n], rejected scores [n]) from one batched `score(texts) -> rewards` call."""
    texts = [rm_text(p["turns"], p["chosen"]) for p in pairs] + [rm_text(p["turns"], p["rejected"]) for p in pairs]
    s = np.asarray(score(texts), dtype=float)
    return s[: len(pairs)], s[len(pairs):]


def pairwise_correct(chosen: Sequence[float], rejected: Sequence[float]) -> np.ndarray:
    """Per pair [n]: 1 where chosen scores higher, 0 where lower, 0.5 for a tie (the mean is accuracy)."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return np.where(c > r, 1.0, np.where(c < r, 0.0, 0.5))


def length_direction(pairs: Sequence[dict]) -> int:
    """+1 if the longer reply is chosen more often than not in `pairs` (fit on train), else -1.

    In hh-rlhf harmless-base the chosen reply is the longer one in only 44.5% of pairs
    (2,307 parsed test records), so the honest length baseline prefers the shorter reply.
    """
    correct = length_correct(pairs, direction=+1)
    return 1 if correct.mean() >= 0.5 else -1


def length_correct(pairs: Sequence[dict], direction: int) -> np.ndarray:
    """Per pair [n]: the length-only baseline's correctness, preferring longer (+1) or shorter (-1) replies."""
    c = np.array([len(p["chosen"]) for p in pairs], dtype=float) * direction
    r = np.array([len(p["rejected"]) for p in pairs], dtype=float) * direction
    return pairwise_correct(c, r)


def wrong_language(target_scores: Sequence[float], english_scores: Sequence[float]) -> np.ndarray:
    """Consistency probe, per item [n]: 1 where the RM scores the English answer above the same
    answer in the target language (to a target-language prompt), 0 below, 0.5 for a tie."""
    return 1.0 - pairwise_correct(target_scores, english_scores)


# --------------------------------------------------------------------------- best-of-n
def best_of_n(scores: np.ndarray) -> np.ndarray:
    """Index of the highest-reward sample per prompt: scores [P, n] -> picks [P] (first on ties)."""
    return np.asarray(scores, dtype=float).argmax(axis=1)


def pick(values: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """values [P, n], picks [P] -> the picked value per prompt [P]."""
    values = np.asarray(values, dtype=float)
    return values[np.arange(values.shape[0]), np.asarray(picks)]


def gain_over_random(scores: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per prompt [P]: reward of the pick minus the expected reward of a uniform random pick
    (the mean over the n samples), both under the same scores [P, n]."""
    scores = np.asarray(scores, dtype=float)
    return pick(scores, picks) - scores.mean(axis=1)


def agreement(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """Per prompt [P]: 1 where both reward models pick the same sample (chance level is 1/n)."""
    return (best_of_n(scores_a) == best_of_n(scores_b)).astype(float)


def standardise(gains: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Gains [P] in units of the within-prompt reward spread (pooled sd of scores [P, n] around
    each prompt's mean), so RMs with different scales compare; zero spread gives zeros."""
    scores = np.asarray(scores, dtype=float)
    sd = float(np.sqrt(((scores - scores.mean(axis=1, keepdims=True)) ** 2).mean()))
    return np.asarray(gains, dtype=float) / sd if sd > 0 else np.zeros_like(gains, dtype=float)


def judged_gain(judge_scores: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per prompt [P]: the JUDGE's reward of the picked sample over a random pick from the same n
    samples (its within-prompt mean), in the judge's within-prompt sd. judge_scores [P, n], picks
    [P]. Judging with the RM that picked is >= 0 by construction; another RM makes it a test."""
    return standardise(gain_over_random(judge_scores, picks), judge_scores)


# --------------------------------------------------------------------------- baselines, matched compute
def chance(n: int) -> np.ndarray:
    """The chance baseline's per-pair correctness [n] (0.5 each: a coin, ties counted half)."""
    return np.full(n, 0.5)


def matched_steps(settings: dict, source_steps: int) -> dict:
    """Trainer settings of the translate-train RM: the source RM's settings with exactly its
    optimizer steps (`max_steps`), whatever the number of pairs (fewer pairs: more epochs)."""
    if source_steps < 1:
        raise ValueError(f"source RM made {source_steps} optimizer steps")
    return {**settings, "max_steps": int(source_steps)}


def read_curve(path: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a trainer's curve.tsv (header step, tokens, loss[, lr])."""
    lines = Path(path).read_text().splitlines()[1:]
    return [(int(cells[0]), float(cells[2])) for cells in (line.split("\t") for line in lines if line.strip())]


def curve_summary(curve: list[tuple[int, float]], k: int = 5) -> dict:
    """Mean loss of the first and last k steps (did training move the loss?)."""
    losses = [loss for _, loss in curve]
    if not losses:
        return {}
    return {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])), "steps": len(losses)}


# --------------------------------------------------------------------------- where reward models live
def rm_dir() -> Path:
    from pipeline.paths import repo_root

    return repo_root() / "models" / "rm"


def splits_dir() -> Path:
    from pipeline.paths import data_dir

    return data_dir("_shared") / "rm"


def load_reward_model(base: str, adapter: Path):
    """The trained reward model (seq-classification head + LoRA) and its tokenizer."""
    from pipeline.train import load_trained

    return load_trained(base, adapter, head="reward")


def scorer(model, tok, batch_size: int):
    """texts -> rewards, batched (the callable this module's math takes)."""
    from pipeline.train import reward_scores

    return lambda texts: reward_scores(model, tok, list(texts), batch_size=batch_size)
