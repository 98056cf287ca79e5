"""laft_corpus@<lang>: the cleaned monolingual training text shared by laft@<lang> and maft.

Reads the pack's TRAIN text only: `tgt` of data/<lang>/train.jsonl (NTREX train documents)
and data/<lang>/mono_train.txt (UDHR, and for nya the Chichewa Bible); removes the paragraphs
of the held-out UDHR articles (`laft.udhr_heldout`: the same seeded article numbers in every
language; laft_eval@<lang> scores them as a second, out-of-domain test set); applies MAFT's
cleaning (pipeline.laft.clean_lines: NFC, no letter-free lines, at least `laft.min_tokens`
whitespace tokens, no duplicates). Writes data/_mono/<lang>.txt (one line each) and
results/<lang>/laft_corpus.json with what was dropped and why.
"""

from __future__ import annotations

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.laft import clean_lines, corpus_path, drop_lines, pack_udhr_sources, read_target_text, udhr_eval_rows, utf8_bytes
from pipeline.paths import data_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import write_stage


def training_lines(pack_id: str, cfg: dict) -> tuple[list[str], dict]:
    """Cleaned training lines without any held-out UDHR paragraph, and the counts."""
    heldout = udhr_eval_rows(pack_udhr_sources(pack_id), cfg["udhr_heldout"], f"languages/{pack_id}.yaml")
    raw, removed = drop_lines(read_target_text(data_dir(pack_id)), {r["text"] for r in heldout})
    lines, stats = clean_lines(raw, min_tokens=cfg["min_tokens"])
    stats |= {"bytes_kept": sum(map(utf8_bytes, lines)), "udhr_heldout_paragraphs": len(heldout),
              "udhr_heldout_articles": len({r["article"] for r in heldout}), "dropped_udhr_heldout": removed}
    return lines, stats


def run(pack_id: str) -> None:
    cfg = section("laft")
    lines, stats = training_lines(pack_id, cfg)
    if not lines:
        raise PolyalignError(data_dir(pack_id) / "train.jsonl", "tgt", "no training line survives cleaning",
                             f"add monolingual text to languages/{pack_id}.yaml or lower laft.min_tokens")
    io.write_text(corpus_path(pack_id), "".join(line + "\n" for line in lines))
    inputs = {name.split(".")[0]: sha256_file(data_dir(pack_id) / name)[:12]
              for name in ("train.jsonl", "mono_train.txt") if (data_dir(pack_id) / name).exists()}
    sig = signature(stage="laft_corpus", pack=pack_id, min_tokens=cfg["min_tokens"],
                    udhr_heldout=cfg["udhr_heldout"], **inputs)
    write_stage(pack_id, "laft_corpus", stats, [], sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
