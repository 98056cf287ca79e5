"""laft_corpus@<lang>: the cleaned monolingual training text shared by laft@<lang> and maft.

Reads the pack's TRAIN text only: `tgt` of data/<lang>/train.jsonl (NTREX train documents)
and data/<lang>/mono_train.txt (UDHR, and for nya the Chichewa Bible); applies MAFT's
cleaning (pipeline.laft.clean_lines: NFC, no letter-free lines, at least `laft.min_tokens`
whitespace tokens, no duplicates). Writes data/_mono/<lang>.txt (one line each) and
results/<lang>/laft_corpus.json with what was dropped and why.
"""

from __future__ import annotations

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.laft import corpus_path, target_corpus
from pipeline.paths import data_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import write_stage


def run(pack_id: str) -> None:
    min_tokens = section("laft")["min_tokens"]
    lines, stats = target_corpus(data_dir(pack_id), min_tokens=min_tokens)
    if not lines:
        raise PolyalignError(data_dir(pack_id) / "train.jsonl", "tgt", "no training line survives cleaning",
                             f"add monolingual text to languages/{pack_id}.yaml or lower laft.min_tokens")
    io.write_text(corpus_path(pack_id), "".join(line + "\n" for line in lines))
    inputs = {name.split(".")[0]: sha256_file(data_dir(pack_id) / name)[:12]
              for name in ("train.jsonl", "mono_train.txt") if (data_dir(pack_id) / name).exists()}
    sig = signature(stage="laft_corpus", pack=pack_id, min_tokens=min_tokens, **inputs)
    write_stage(pack_id, "laft_corpus", stats, [], sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
