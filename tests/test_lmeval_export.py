"""lm-evaluation-harness export: tasks over local files run offline on the tiny model and agree
with the project's own scorer."""

from __future__ import annotations

import math

import pytest
import yaml

from pipeline import lmeval_export as X
from pipeline import models

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tiny(one_thread):
    return models.materialise("tiny-random"), *models.load_model("tiny-random")


def _evaluate(folder, out, task: str, **model_args):
    import os

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": folder, "dtype": "float32", **model_args}.items())
    res = simple_evaluate(model="hf", model_args=args, tasks=[task], task_manager=TaskManager(include_path=str(out)),
                          device="cpu", batch_size=2)
    return res["results"][task]


def test_ntrex_task_bits_per_byte_matches_project_scorer(tiny, tmp_path):
    from pipeline.generate import text_nll_bits

    folder, model, tok = tiny
    lines = models.ntrex_sample("nya", 6)
    rows = [{"doc": f"d{i // 3}", "line": i % 3, "tgt": t, "en": t.upper()} for i, t in enumerate(lines)]
    paths = X.language_tasks("nya", rows, tmp_path)
    task = yaml.safe_load(paths[0].read_text())
    assert task["output_type"] == "loglikelihood_rolling" and task["dataset_path"] == "json"
    # lm-eval already puts BOS before each rolling window; a tokenizer that adds BOS itself (Gemma)
    # would score a second one unless add_bos_token=False (measured: 3.986 vs 3.956 bits/byte here)
    got = _evaluate(folder, tmp_path, "polyalign_nya_ntrex_nya", add_bos_token=False)
    docs = X.documents(rows, "tgt")
    ours = sum(text_nll_bits(model, tok, [d["text"] for d in docs])) / sum(len(d["text"].encode()) for d in docs)
    assert math.isclose(got["bits_per_byte,none"], ours, rel_tol=1e-3)


def test_survey_task_accuracy_matches_project_scorer(tiny, tmp_path):
    from pipeline.generate import continuation_logprobs

    folder, model, tok = tiny
    targets = [{"id": f"Q{i}", "split": "heldout", "usable": True, "codes": [1, 2, 3, 4],
                "counts": [5, 1, 9, 2] if i % 2 else [1, 8, 2, 2]} for i in range(6)]
    targets.append({**targets[0], "split": "train"})
    prompts = {f"Q{i}": f"Question {i}: how important is family? 1. Very 2. Rather 3. Not very 4. Not at all. "
                        f"Answer with a number.\nAnswer:" for i in range(6)}
    records = X.survey_records(targets, lambda t: prompts[t["id"]])
    assert len(records) == 6 and [r["gold"] for r in records[:2]] == [1, 2]
    X.culture_tasks("zz", records, tmp_path)
    got = _evaluate(folder, tmp_path, "polyalign_zz_wvs", add_bos_token=True)
    hits = 0
    for r in records:
        lps = continuation_logprobs(model, tok, [r["prompt"]] * 4, r["choices"])
        hits += max(range(4), key=lps.__getitem__) == r["gold"]
    assert got["acc,none"] == pytest.approx(hits / len(records))


def test_cli_exports_a_built_pack_and_refuses_an_unbuilt_one(repo_copy, tmp_path):
    from typer.testing import CliRunner

    from pipeline import io
    from pipeline.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", "lm-eval", "--pack", "nya", "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "run dvc repro data@nya" in res.output
    io.write_jsonl(repo_copy / "data" / "nya" / "test.jsonl",
                   [{"doc": "d1", "line": 1, "en": "Hello.", "tgt": "Moni."}, {"doc": "d1", "line": 0, "en": "A", "tgt": "B"}])
    res = runner.invoke(app, ["export", "lm-eval", "--pack", "nya", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert io.read_jsonl(tmp_path / "t" / "polyalign_nya_ntrex_nya.jsonl") == [{"doc": "d1", "text": "B\nMoni."}]
    task = yaml.safe_load((tmp_path / "t" / "polyalign_nya_ntrex_eng.yaml").read_text())
    assert task["task"] == "polyalign_nya_ntrex_eng" and task["tag"] == ["polyalign_nya"]
