"""data@<lang>: resolve and verify the pack's sources, NFC-normalise, split NTREX by document.

Writes data/<lang>/{train,dev,test}.jsonl (rows {doc, line, en, tgt}), data/<lang>/mono_train.txt
(the pack's other monolingual text, cleaned of exact duplicates and of NTREX test sentences)
and results/<lang>/data.json with sizes, source hashes and the language identifier's
measured accuracy on the held-out sentences (docs/contracts.md: at least 0.95, or metrics that
depend on it carry a note).
"""

from __future__ import annotations

from collections import Counter

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack, load_language
from pipeline.paths import data_dir
from pipeline.provenance import signature
from pipeline.report import LID_MIN_ACCURACY, row, write_stage
from pipeline.sources import read, resolve, sha256_path
from pipeline.stats import bootstrap_ci
from pipeline.text import identify, normalise, split_documents



def parallel_rows(pack: LanguagePack, origin: str) -> list[dict]:
    """Aligned NTREX rows {doc, line, en, tgt}, NFC-normalised; lengths must agree."""
    english, target = read(pack.sources.english, origin=origin), read(pack.sources.parallel, origin=origin)
    docs = read(pack.sources.documents, origin=origin)
    if not len(english) == len(target) == len(docs):
        raise PolyalignError(origin, "sources.parallel", f"{len(target)} target lines, {len(english)} English "
                             f"lines and {len(docs)} document ids do not align", "use files of one NTREX release")
    return [{"doc": d, "line": i, "en": normalise(e), "tgt": normalise(t)}
            for i, (d, e, t) in enumerate(zip(docs, english, target))]


def monolingual_lines(pack: LanguagePack, origin: str, exclude: set[str]) -> list[str]:
    """The pack's extra monolingual text: normalised, deduplicated, test sentences removed."""
    seen, lines = set(exclude), []
    for source in pack.sources.monolingual:
        for text in read(source, origin=origin):
            text = normalise(text)
            if text and text not in seen:
                seen.add(text)
                lines.append(text)
    return lines


def lid_check(pack: LanguagePack, sentences: list[str]) -> dict:
    """Held-out accuracy of the pack's identifier, with its most common confusion."""
    labels = identify(sentences, pack)
    hits = [label == pack.lid.label for label in labels]
    acc, lo, hi = bootstrap_ci(hits)
    wrong = Counter(label for label, ok in zip(labels, hits) if not ok).most_common(1)
    return {"lid_accuracy": acc, "lid_ci": (lo, hi), "lid_n": len(hits),
            "lid_confused_with": wrong[0][0] if wrong else ""}


def run(pack_id: str) -> None:
    pack, cfg = load_language(pack_id), section("data")
    origin = f"languages/{pack_id}.yaml"
    rows = parallel_rows(pack, origin)
    split = split_documents([r["doc"] for r in rows], test_docs=cfg["test_docs"], dev_docs=cfg["dev_docs"],
                            salt=cfg["split_salt"])
    parts = {name: [r for r in rows if split[r["doc"]] == name] for name in ("train", "dev", "test")}
    held_out = {r["tgt"] for name in ("dev", "test") for r in parts[name]}
    mono = monolingual_lines(pack, origin, held_out)
    lid = lid_check(pack, [r["tgt"] for r in parts["test"]])
    out = data_dir(pack_id)
    for name, part in parts.items():
        io.write_jsonl(out / f"{name}.jsonl", part)
    io.write_text(out / "mono_train.txt", "".join(line + "\n" for line in mono))
    sources = [pack.sources.english, pack.sources.parallel, pack.sources.documents, *pack.sources.monolingual]
    hashes = {f"source_{i}": sha256_path(resolve(s, origin=origin))[:16] for i, s in enumerate(sources)}
    metrics = {f"{name}_sentences": len(part) for name, part in parts.items()}
    metrics |= {f"{name}_documents": len({r['doc'] for r in part}) for name, part in parts.items()}
    metrics |= {"mono_lines": len(mono), "mono_bytes": sum(len(m.encode()) for m in mono),
                "lid_accuracy": lid["lid_accuracy"], "lid_n": lid["lid_n"],
                "lid_sound": lid["lid_accuracy"] >= LID_MIN_ACCURACY}
    note = None
    if lid["lid_accuracy"] < LID_MIN_ACCURACY:
        note = (f"{pack.lid.model} identifies only {lid['lid_accuracy']:.2f} of held-out {pack.name} sentences "
                f"(most often as '{lid['lid_confused_with']}'); language-fidelity metrics for {pack_id} are unreliable")
    out_rows = [row(pack_id, "language", "data", "lid_accuracy", lid["lid_accuracy"], ci=lid["lid_ci"],
                    n=lid["lid_n"], note=note)]
    sig = signature(stage="data", pack=pack_id, cfg=cfg, lid=f"{pack.lid.model}:{pack.lid.label}", **hashes)
    write_stage(pack_id, "data", metrics, out_rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
