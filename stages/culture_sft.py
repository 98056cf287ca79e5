"""culture_sft@<culture>: LoRA tuning on the culture's augmented survey questions (CultureLLM).

Each example is one (seed or augmented) training question in CultureLLM's format: the
system prompt naming the culture, the question, the item's options as the survey lists them;
the response is one answer code (templates `system_v1`, `survey_v1`).

Training target (`culture.sft.target`):
- `distribution` (default): the answers given to one item's questions follow the country's
  real answer shares as closely as the number of questions allows (largest remainder, seeded
  order). Cross-entropy on these soft labels is minimised by the real distribution, which is
  what culture_eval measures (Jensen-Shannon, EMD).
- `majority`: every question of an item gets the country's most chosen answer, as in
  CultureLLM (which fine-tunes towards the majority answer).

`python -m stages.culture_sft --all` trains the one model on all enabled cultures together
(each example keeps its own culture's system prompt), leaving out every item that any enabled
culture holds out, so no culture's held-out question is seen. Writes
models/<C>/culture_sft/{adapter/, curve.tsv} and results/<C>/culture_sft.{json,rows.json};
--all writes models/culture_all/{adapter/, curve.tsv} and results/_shared/culture_sft_all.{json,
rows.json} (its training rows, pack `_shared`; culture_eval@<C> scores it per culture).
"""

from __future__ import annotations

import random
from pathlib import Path

from pipeline import culture as C
from pipeline import io
from pipeline.config import base_model, deep_merge, enabled, section
from pipeline.errors import PolyalignError
from pipeline.packs import CulturePack, load_culture
from pipeline.paths import repo_root
from pipeline.provenance import sha256_file, signature
from pipeline.report import SHARED, row, write_stage
from pipeline.train import curve_file

STAGE = "culture_sft"
ALL = C.ALL  # models/culture_all/: the model tuned on all enabled cultures
OWN_KEYS = {"base", "target"}  # culture.sft keys that are not pipeline.train settings


def train_cfg(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in OWN_KEYS}


def answers_for(target: dict, n: int, mode: str, rng: random.Random) -> list[int]:
    """n answer codes for n questions of one item, by the configured target mode."""
    if mode == "majority":
        return [C.modal_code(target)] * n
    if mode == "distribution":
        return C.quota_answers(target["dist"], target["codes"], n, rng)
    raise PolyalignError(repo_root() / "params.yaml", "culture.sft.target", f"unknown target '{mode}'",
                         "use 'distribution' or 'majority'")


def build_examples(pack: CulturePack, targets: list[dict], aug: list[dict], mode: str, seed: int,
                   exclude: set[str] = frozenset()) -> list[dict]:
    """{"prompt", "response", "item"} per augmented question of a usable training item."""
    by_id = {t["id"]: t for t in targets}
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for r in aug:
        t = by_id.get(r["item"])
        if t and t["split"] == "train" and t["usable"] and r["item"] not in exclude:
            groups.setdefault(r["item"], []).append(r["question"])
    out = []
    for item_id, questions in groups.items():
        item = C.Item.from_json(by_id[item_id])
        for question, code in zip(questions, answers_for(by_id[item_id], len(questions), mode, rng)):
            out.append({"prompt": C.survey_prompt(pack.templates, pack.name, item, question),
                        "response": f" {code}", "item": item_id, "culture": pack.id})
    return out


def train(base: str, examples: list[dict], out: Path, cfg: dict) -> dict:
    """pipeline.train.train_causal_lm into `out`, atomically (adapter and curve appear together)."""
    from pipeline.train import train_causal_lm

    if not examples:
        raise PolyalignError(out, "examples", "no training example", "check the culture's targets and augmentation")
    pairs = [{"prompt": e["prompt"], "response": e["response"]} for e in examples]
    random.Random(cfg.get("seed", 0)).shuffle(pairs)
    with io.atomic_path(out) as tmp:
        tmp.mkdir()
        return train_causal_lm(base, pairs, tmp, train_cfg(cfg))


def train_rows(pack: str, metrics: dict, target: str, stage: str = STAGE) -> list[dict]:
    """Cost and fit rows for the scorecard (no CI: one training run); each names the target mode."""
    spec = [("examples", True), ("train_tokens", True), ("final_loss", False), ("tokens_per_s", True),
            ("wall_s", False)]
    return [row(pack, "culture", stage, key, metrics.get(key), higher_is_better=hib,
                note=f"target: {target}" if metrics.get(key) is not None else "not reported by the trainer")
            for key, hib in spec]


def run(pack_id: str) -> None:
    pack, cfg = load_culture(pack_id), section("culture")["sft"]
    targets, aug = C.read_inputs(pack_id)
    examples = build_examples(pack, targets, aug, cfg["target"], cfg.get("seed", 0))
    base = base_model(cfg)
    metrics = train(base, examples, C.model_dir(pack_id), {**cfg, "curve_file": curve_file(pack_id, STAGE)})
    metrics = {"examples": len(examples), "items": len({e["item"] for e in examples}), **metrics}
    sig = signature(stage=STAGE, pack=pack_id, base=base, cfg=cfg, target=cfg["target"],
                    templates={k: pack.templates[k].id for k in ("system", "survey")},
                    aug=sha256_file(C.aug_path(pack_id))[:12])
    write_stage(pack_id, STAGE, metrics, train_rows(pack_id, metrics, cfg["target"]), sig)


def heldout_anywhere(culture_ids: list[str]) -> set[str]:
    """Items held out by any of these cultures (the all-cultures model must not see them)."""
    return {t["id"] for c in culture_ids for t in C.read_inputs(c)[0] if t["split"] == "heldout"}


def run_all() -> None:
    sft = section("culture")
    cfg = deep_merge(sft["sft"], sft.get("sft_all") or {})
    cultures = enabled("cultures")
    exclude = heldout_anywhere(cultures)
    examples = []
    for c in cultures:
        targets, aug = C.read_inputs(c)
        examples += build_examples(load_culture(c), targets, aug, cfg["target"], cfg.get("seed", 0), exclude)
    base = base_model(cfg)
    metrics = train(base, examples, C.model_dir(ALL), {**cfg, "curve_file": curve_file(SHARED, "culture_sft_all")})
    metrics = {"examples": len(examples), "cultures": len(cultures), "items_excluded": len(exclude), **metrics}
    sig = signature(stage="culture_sft_all", cultures=",".join(cultures), base=base, cfg=cfg,
                    **{f"aug_{c}": sha256_file(C.aug_path(c))[:12] for c in cultures})
    # training rows once, under _shared; its held-out scores are per culture (culture_eval@<C>)
    write_stage(SHARED, "culture_sft_all", metrics, train_rows(SHARED, metrics, cfg["target"], "culture_sft_all"), sig)


if __name__ == "__main__":
    import sys

    from stages._cli import stage_main

    if "--all" in sys.argv[1:]:
        raise SystemExit(stage_main(run_all, __doc__, pack=False, argv=[a for a in sys.argv[1:] if a != "--all"]))
    raise SystemExit(stage_main(run, __doc__))
