"""Export a pack's evaluation sets as lm-evaluation-harness tasks over local files.

`polyalign export lm-eval --pack <id> --out DIR` writes, for a language pack, the NTREX
test documents (the data stage's split) as `loglikelihood_rolling` tasks on both sides
(target language and English; bits per byte is tokenizer-independent, so any model or
adapter compares), and for a culture pack the usable held-out World Values Survey items as
a `multiple_choice` task (options " 1".." k" after the pack's survey prompt, as
culture_eval scores them; gold = the country's modal answer, so lm-eval's `acc` is
culture_eval's held-out modal accuracy). Each task is a YAML plus a JSONL beside it, read
through the `json` dataset builder: nothing is fetched. Run with
`lm_eval --include_path DIR --tasks polyalign_<id> --model hf --model_args pretrained=...`.

Pass `add_bos_token=False` in model_args for the ntrex (bits per byte) tasks when the
tokenizer adds BOS itself (Gemma): lm-eval already puts BOS before each rolling window and
would otherwise score a second one (on the tiny model 3.986 instead of 3.956 bits/byte;
with it, lm-eval matches the project's text_nll_bits, tests/test_lmeval_export.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import io
from pipeline.errors import PolyalignError

EXPORT_VERSION = 1  # lm-eval task metadata.version


def _task(name: str, data: Path, **fields) -> dict:
    return {"task": name, "tag": [f"polyalign_{name.split('_')[1]}"], "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}}, "test_split": "test",
            **fields, "metadata": {"version": EXPORT_VERSION}}


def documents(rows: list[dict], side: str) -> list[dict]:
    """NTREX rows {doc, line, en, tgt} -> one record {doc, text} per document, lines in order."""
    docs: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        docs.setdefault(str(r["doc"]), []).append((int(r["line"]), r[side]))
    return [{"doc": d, "text": "\n".join(t for _, t in sorted(lines))} for d, lines in docs.items()]


def language_tasks(pack_id: str, rows: list[dict], out: Path) -> list[Path]:
    """Rolling-loglikelihood tasks over the pack's NTREX test documents, target and English side."""
    if not rows:
        raise PolyalignError(f"data/{pack_id}/test.jsonl", "(rows)", "no test rows", f"run dvc repro data@{pack_id}")
    written = []
    for side, label in (("tgt", pack_id), ("en", "eng")):
        data = out / f"polyalign_{pack_id}_ntrex_{label}.jsonl"
        io.write_jsonl(data, documents(rows, side))
        task = _task(f"polyalign_{pack_id}_ntrex_{label}", data, output_type="loglikelihood_rolling",
                     doc_to_text="", doc_to_target="{{text}}",
                     metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])
        written.append(_write(out, task))
    return written


def survey_records(targets: list[dict], prompt_of) -> list[dict]:
    """Usable held-out items -> {id, prompt, choices, gold}; prompt_of(target) gives the prompt text."""
    import numpy as np

    out = []
    for t in targets:
        if t["split"] != "heldout" or not t["usable"]:
            continue
        out.append({"id": t["id"], "prompt": prompt_of(t), "choices": [f" {c}" for c in t["codes"]],
                    "gold": int(np.argmax(t["counts"]))})
    return out


def culture_tasks(pack_id: str, records: list[dict], out: Path) -> list[Path]:
    if not records:
        raise PolyalignError(f"culture_targets.json of {pack_id}", "split", "no usable held-out item",
                             f"run dvc repro culture_augment@{pack_id}")
    data = out / f"polyalign_{pack_id}_wvs.jsonl"
    io.write_jsonl(data, records)
    task = _task(f"polyalign_{pack_id}_wvs", data, output_type="multiple_choice", doc_to_text="{{prompt}}",
                 doc_to_choice="{{choices}}", doc_to_target="{{gold}}", target_delimiter="",
                 metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    return [_write(out, task)]


def _write(out: Path, task: dict) -> Path:
    path = out / f"{task['task']}.yaml"
    io.write_text(path, yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    return path


def export(pack_id: str, out: Path) -> list[Path]:
    """Write the pack's tasks into `out` (created); returns the YAML paths."""
    from pipeline.packs import KINDS, load, pack_ids
    from pipeline.paths import data_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = next((k for k in KINDS if pack_id in pack_ids(k)), None)
    if kind is None:
        raise PolyalignError("(command line)", "--pack", f"no pack '{pack_id}'", "see `polyalign packs list`")
    if kind == "languages":
        test = data_dir(pack_id) / "test.jsonl"
        if not test.exists():
            raise PolyalignError(test, "(file)", "not built", f"run dvc repro data@{pack_id}")
        return language_tasks(pack_id, io.read_jsonl(test), out)
    from pipeline import culture as C
    from pipeline.paths import repo_root

    path = repo_root() / "data" / "_culture" / pack_id / "culture_targets.json"  # culture_augment's output
    if not path.exists():
        raise PolyalignError(path, "(file)", "not built", f"run dvc repro culture_augment@{pack_id}")
    pack = load(kind, pack_id)
    records = survey_records(io.read_json(path),
                             lambda t: C.survey_prompt(pack.templates, pack.name, C.Item.from_json(t)))
    return culture_tasks(pack_id, records, out)
