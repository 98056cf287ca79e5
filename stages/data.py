"""data@<lang>: resolve and verify the pack's sources, NFC-normalise, split NTREX by document.

Writes data/<lang>/{train,dev,test}.jsonl (rows {doc, line, en, tgt}), data/<lang>/mono_train.txt
(the pack's other monolingual text, cleaned of exact duplicates and of NTREX test sentences)
and results/<lang>/data.json with sizes, source hashes and the language identifier's
measured accuracy on the test sentences (docs/contracts.md: at least 0.95, or metrics that depend on
it carry a note; Wilson interval, a sample stratified over the test documents when
`data.lid_sentences` caps it). The identifier is chosen on the dev documents only: with
`lid: {model: auto}` the candidate with the best dev accuracy is picked; data/<lang>/lid.json
records the pick and every candidate's dev accuracy (for a fixed identifier, its own).
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
from pipeline.stats import stratified_sample, wilson_ci
from pipeline.text import LID_CHOICE, choose_lid, identify_with, normalise, split_documents


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


def pick_lid(pack: LanguagePack, dev: list[str]) -> dict:
    """{model, label, dev: {identifier: dev accuracy}, dev_n}: the pack's identifier, or for `auto`
    the candidate with the best accuracy on the dev sentences."""
    labels = pack.lid.labels if pack.lid.model == "auto" else {pack.lid.model: pack.lid.label}
    best, acc = choose_lid(labels, dev)
    if best is None:
        raise PolyalignError(f"languages/{pack.id}.yaml", "lid", "no identifier among "
                             f"{', '.join(labels)} is available", "install one (see `polyalign doctor`)")
    return {"model": best, "label": labels[best], "dev": acc, "dev_n": len(dev)}


def lid_check(choice: dict, test: list[dict], n: int | None, seed: int) -> dict:
    """Test accuracy of the chosen identifier: n sentences stratified over the test documents
    (all when n is None), Wilson interval, with its most common confusion."""
    sample = stratified_sample(test, lambda r: r["doc"], n, seed=seed)
    labels = identify_with([r["tgt"] for r in sample], choice["model"])
    hits = [label == choice["label"] for label in labels]
    acc, lo, hi = wilson_ci(sum(hits), len(hits))
    wrong = Counter(label for label, ok in zip(labels, hits) if not ok).most_common(1)
    return {"lid_accuracy": acc, "lid_ci": (lo, hi), "lid_n": len(hits), "lid_docs": len({r["doc"] for r in sample}),
            "lid_confused_with": wrong[0][0] if wrong else ""}


def lid_row(pack: LanguagePack, choice: dict, lid: dict) -> dict:
    dev = ", ".join(f"{m} {a:.3f}" if a is not None else f"{m} unavailable" for m, a in choice["dev"].items())
    how = "picked on dev" if pack.lid.model == "auto" else "set in the pack"
    note = f"{choice['model']} ({how}; dev accuracy over {choice['dev_n']} sentences: {dev})"
    if lid["lid_accuracy"] < LID_MIN_ACCURACY:
        note += (f"; identifies only {lid['lid_accuracy']:.2f} of test {pack.name} sentences (most often as "
                 f"'{lid['lid_confused_with']}'): language-fidelity metrics for {pack.id} are unreliable")
    return row(pack.id, "language", "data", "lid_accuracy", lid["lid_accuracy"], ci=lid["lid_ci"], n=lid["lid_n"],
               note=note) | {"n_docs": lid["lid_docs"]}


def run(pack_id: str) -> None:
    pack, cfg = load_language(pack_id), section("data")
    origin = f"languages/{pack_id}.yaml"
    rows = parallel_rows(pack, origin)
    split = split_documents([r["doc"] for r in rows], test_docs=cfg["test_docs"], dev_docs=cfg["dev_docs"],
                            salt=cfg["split_salt"])
    parts = {name: [r for r in rows if split[r["doc"]] == name] for name in ("train", "dev", "test")}
    held_out = {r["tgt"] for name in ("dev", "test") for r in parts[name]}
    mono = monolingual_lines(pack, origin, held_out)
    choice = pick_lid(pack, [r["tgt"] for r in parts["dev"]])
    lid = lid_check(choice, parts["test"], cfg.get("lid_sentences"), cfg.get("seed", 0))
    out = data_dir(pack_id)
    for name, part in parts.items():
        io.write_jsonl(out / f"{name}.jsonl", part)
    io.write_text(out / "mono_train.txt", "".join(line + "\n" for line in mono))
    io.write_json(out / LID_CHOICE, choice)
    sources = [pack.sources.english, pack.sources.parallel, pack.sources.documents, *pack.sources.monolingual]
    hashes = {f"source_{i}": sha256_path(resolve(s, origin=origin))[:16] for i, s in enumerate(sources)}
    metrics = {f"{name}_sentences": len(part) for name, part in parts.items()}
    metrics |= {f"{name}_documents": len({r['doc'] for r in part}) for name, part in parts.items()}
    metrics |= {"mono_lines": len(mono), "mono_bytes": sum(len(m.encode()) for m in mono),
                "lid_accuracy": lid["lid_accuracy"], "lid_n": lid["lid_n"], "lid_docs": lid["lid_docs"],
                "lid_sound": lid["lid_accuracy"] >= LID_MIN_ACCURACY}
    metrics |= {f"lid_dev.{m}": a for m, a in choice["dev"].items() if a is not None}
    sig = signature(stage="data", pack=pack_id, cfg=cfg, lid=f"{choice['model']}:{choice['label']}", **hashes)
    write_stage(pack_id, "data", metrics, [lid_row(pack, choice, lid)], sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
