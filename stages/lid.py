"""lid: train a fastText language identifier on the NTREX train documents of every NTREX language.

Labels are NTREX codes (`eng`, `nya`, `nep`, ...). Test and dev documents (the same
document split as `data@<pack>`) are never used for training, so `data@<pack>` can measure
test accuracy honestly. The metrics report accuracy on the dev documents of every language
(`dev_acc.<code>`, `dev_acc_mean`, `dev_acc_min`): the figures to compare hyper-parameters by
(never the test documents). It depends on no pack: adding a language does not retrain it.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from pipeline import io
from pipeline.config import section, settings_read
from pipeline.paths import SHARED, repo_root, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.seeding import seed_everything
from pipeline.sources import read
from pipeline.text import LID_MODEL, normalise, ntrex_pins, ntrex_source, split_documents


def training_lines(codes: list[str], split: dict[str, str], docs: list[str], per_lang: int, seed: int) -> list[str]:
    """fastText lines `__label__<code> <sentence>` from train documents only."""
    rng = random.Random(seed)
    lines = []
    for code in codes:
        sents = [normalise(s) for s, d in zip(read(ntrex_source(code)), docs) if split[d] == "train" and s.strip()]
        rng.shuffle(sents)
        lines += [f"__label__{code.split('-')[0]} {s}" for s in sents[:per_lang]]
    rng.shuffle(lines)
    return lines


def dev_accuracy(model, codes: list[str], split: dict[str, str], docs: list[str]) -> dict[str, float]:
    """{code: share of the code's dev-document sentences the model labels as that code}."""
    out = {}
    for code in codes:
        sents = [normalise(s) for s, d in zip(read(ntrex_source(code)), docs) if split[d] == "dev" and s.strip()]
        label = f"__label__{code.split('-')[0]}"
        out[code] = sum(model.predict(s)[0][0] == label for s in sents) / max(len(sents), 1)
    return out


def run() -> None:
    import fasttext

    cfg, data_cfg = section("lid"), section("data")
    seed_everything(cfg["seed"])
    docs = read(ntrex_source("documents"))
    split = split_documents(docs, test_docs=data_cfg["test_docs"], dev_docs=data_cfg["dev_docs"],
                            salt=data_cfg["split_salt"])
    codes = sorted(c for c in ntrex_pins() if c != "documents") if cfg["languages"] == "all" else cfg["languages"]
    lines = training_lines(codes, split, docs, cfg["sentences_per_language"], cfg["seed"])
    out = repo_root() / LID_MODEL
    with tempfile.TemporaryDirectory() as tmp, io.atomic_path(out) as tmp_model:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(str(train_file), epoch=cfg["epoch"], dim=cfg["dim"], minn=cfg["minn"],
                                          maxn=cfg["maxn"], wordNgrams=1, lr=cfg["lr"], bucket=cfg["bucket"], thread=1,
                                          seed=cfg["seed"], verbose=0)
        model.save_model(str(tmp_model))
        dev = dev_accuracy(model, codes, split, docs)
    metrics = {"languages": len(codes), "train_lines": len(lines), "model_bytes": out.stat().st_size,
               "dev_acc_mean": sum(dev.values()) / len(dev), "dev_acc_min": min(dev.values()),
               **{f"dev_acc.{code}": acc for code, acc in dev.items()}}
    sig = signature(stage="lid", cfg=cfg, split=data_cfg, model_sha=sha256_file(out)[:12])
    # kept by git beside the other metrics (results/), so `dvc metrics diff <rev>` reads it
    io.write_json(results_dir(SHARED) / "lid.json", {**metrics, "signature": sig, "settings": settings_read()})


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
