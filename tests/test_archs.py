"""Every causal-LM family through the project's loss, scorer, training loop and greedy decoder.

Tiny random configs built locally (no hub), saved as local model folders with the tiny-random
tokenizer, loaded through models.load_model. Each family is checked against its own
transformers forward (`model(ids, labels=...)`, logits) and `model.generate`.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T

from pipeline import models
from pipeline.generate import _encode_prompt, _eos_ids, _trim, generate_ids, sum_logprobs
from pipeline.lm_parts import CausalLMLoss, lm_parts, packing_honoured
from pipeline.losses import IGNORE
from pipeline.train import train_causal_lm

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
# (config class, size keys) per family; `packs`: honours restarting position ids in a packed row
FAMILIES = {
    "gemma3": (T.Gemma3TextConfig, dict(SMALL, num_key_value_heads=2, head_dim=8, sliding_window=16), True),
    "llama": (T.LlamaConfig, dict(SMALL, num_key_value_heads=2), True),
    "qwen2": (T.Qwen2Config, dict(SMALL, num_key_value_heads=2), True),
    "mistral": (T.MistralConfig, dict(SMALL, num_key_value_heads=2), True),
    "phi3": (T.Phi3Config, dict(SMALL, num_key_value_heads=2), True),
    "gpt2": (T.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=256), True),
    "bloom": (T.BloomConfig, dict(hidden_size=32, n_layer=2, n_head=4), False),
    "gpt_neox": (T.GPTNeoXConfig, SMALL, True),
    "xglm": (T.XGLMConfig, dict(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                max_position_embeddings=256), False),
}
TRAIN = dict(max_steps=1, batch_size=2, max_len=32, target_modules="auto", progress=False, checkpoint_every=0,
             mixed_precision="no", lr=1e-2)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("tiny-random")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tok, tmp_path_factory, one_thread):
    """(name, local folder, model, tokenizer) of one family, random weights, fp32."""
    cls, size, packs = FAMILIES[request.param]
    config = cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id, **size)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok2 = models.load_model(str(folder), dtype=torch.float32)  # load_model runs check_lm_parts
    return request.param, folder, model, tok2, packs


def _batch(V: int):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :4] = IGNORE  # a prompt: unscored
    return ids, labels


def test_loss_matches_model_forward(family):
    name, _, model, tok, _ = family
    ids, labels = _batch(len(tok))
    with torch.no_grad():
        ours, n = CausalLMLoss(model, chunk=5)(ids, labels)
        theirs = model(input_ids=ids, labels=labels).loss
    assert int(n) == 2 * 8 and math.isclose(float(ours), float(theirs), rel_tol=1e-4), name


def test_loss_matches_under_lora(family):
    from peft import LoraConfig, get_peft_model

    name, _, model, tok, _ = family
    peft = get_peft_model(model, LoraConfig(r=2, task_type="CAUSAL_LM", init_lora_weights=False,
                                            target_modules="all-linear"))
    try:
        ids, labels = _batch(len(tok))
        assert lm_parts(peft)[0] is not peft.get_base_model()
        with torch.no_grad():
            ours, _ = CausalLMLoss(peft, chunk=64)(ids, labels)
            theirs = peft(input_ids=ids, labels=labels).loss
        assert math.isclose(float(ours), float(theirs), rel_tol=1e-4), name
    finally:
        peft.unload()  # the module-scoped model stays plain for the other tests


def test_scoring_matches_model_logits(family):
    name, _, model, tok, _ = family
    ctx, tgt = [tok.bos_token_id, 5, 6, 7], [8, 9, 10]
    got = sum_logprobs(model, [(ctx, tgt), (ctx[:2], tgt + [11, 12])], batch_size=2)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ctx + tgt])).logits.float().log_softmax(-1)[0]
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(tgt))
    assert math.isclose(got[0], want, rel_tol=1e-4), name


def hf_greedy_alone(model, tok, prompts: list[str], new: int) -> list[list[int]]:
    """transformers' greedy tokens for each prompt on its own (no padding), trimmed at EOS."""
    stop, rows = _eos_ids(model, tok), []
    for prompt in prompts:
        ids = torch.tensor([_encode_prompt(tok, prompt)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        rows.append(_trim(out[0, ids.shape[1]:].tolist(), stop))
    return rows


def test_greedy_matches_generate(family):
    name, _, model, tok, _ = family
    prompts = ["Moni, muli bwanji?", "The president met the minister in Kathmandu on Tuesday"]
    ours = generate_ids(model, tok, prompts, max_new_tokens=6, batch_size=2)
    for row, want in zip(ours, hf_greedy_alone(model, tok, prompts, 6)):
        assert row[0] == want, name


def test_length_grouped_prefill_matches_generate(family, monkeypatch):
    """Each prompt prefilled in its own length group, the caches merged into one left-padded
    layout (zero keys and values in the padding): every family still decodes HF's tokens. Where
    the prompts fill a sliding window (the tiny gemma3's 16 positions), one padded batch instead."""
    from pipeline import generate as G

    name, _, model, tok, _ = family
    prompts = ["Moni?", "The president met the minister in Kathmandu on Tuesday", "Ola, que tal estades hoxe?"]
    monkeypatch.setattr(G, "PREFILL_CALL_TOKENS", 0)
    grouped = G._grouped_prefill
    calls = []
    monkeypatch.setattr(G, "_grouped_prefill", lambda *a: calls.append(a[4]) or grouped(*a))
    ours = generate_ids(model, tok, prompts, max_new_tokens=6, batch_size=3)
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    fits = not window or max(len(_encode_prompt(tok, p)) for p in prompts) <= window - 1
    assert [len(c) for c in calls] == ([3] if fits else []), name
    for row, want in zip(ours, hf_greedy_alone(model, tok, prompts, 6)):
        assert row[0] == want, name


def test_packing_detected(family):
    name, _, model, _, packs = family
    assert packing_honoured(model) is packs, name


def test_one_training_step(family, tmp_path, monkeypatch):
    name, folder, _, _, packs = family
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    examples = [{"prompt": "", "response": "Moni, muli bwanji? Ndili bwino."},
                {"prompt": "", "response": "Galicia is in Spain."}]
    m = train_causal_lm(str(folder), examples, tmp_path / "out", TRAIN)
    assert m["packed"] is packs and m["steps"] == 1 and math.isfinite(m["final_loss"]), name
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


# --------------------------------------------------------------------------- the paper profile
def _unknown_keys(over: dict, base: dict, where: str) -> list[str]:
    """Keys of a profile overlay with no counterpart in the section it overrides (typos would
    otherwise be merged in silently). Training-setting dicts may name any pipeline.train key."""
    from pipeline.train import DEFAULTS

    out = []
    for key, value in over.items():
        if where.endswith("expect"):
            continue  # expectations are keyed by model name
        if key not in base and key not in DEFAULTS:
            out.append(f"{where}.{key}")
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out += _unknown_keys(value, base[key], f"{where}.{key}")
    return out


def test_paper_profile_keys_exist_and_validate(repo_copy):
    import re

    from pipeline.config import load_params, section
    from pipeline.train import DEFAULTS, settings

    text = re.sub(r"^profile: .*$", "profile: paper", (repo_copy / "params.yaml").read_text(), flags=re.M)
    (repo_copy / "params.yaml").write_text(text)
    params = load_params()
    paper = params["profiles"]["paper"]
    assert [k for name, over in paper.items() for k in _unknown_keys(over, params[name], name)] == []
    assert models.split_revision(section("model")["base"])[1]  # a hub id with a pinned revision
    assert section("train")["mixed_precision"] == "bf16"
    for cfg in (section("taco")["sft"], section("culture")["sft"], section("rm_train")["train"]):
        settings({k: v for k, v in cfg.items() if k in DEFAULTS})  # values allowed (keys checked above)
    assert section("rm_transfer")["eval_pairs"] >= 200 and section("laft_eval")["sentences"] is None


def test_paper_profile_dry_run_lists_the_graph(repo_copy):
    """`dvc repro --dry --force` with profile: paper (~3 s). --force because a plain --dry stops at
    the first stage whose input another stage has not yet written (on any fresh clone, any profile)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = re.sub(r"^profile: .*$", "profile: paper", (repo_copy / "params.yaml").read_text(), flags=re.M)
    (repo_copy / "params.yaml").write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=repo_copy, check=True)
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "repro", "--dry", "--force"], cwd=repo_copy, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("model_fingerprint", "model", "taco_sft@nya", "laft_eval@glg", "culture_eval@kr", "compare"):
        assert f"Running stage '{stage}'" in proc.stdout, stage


def test_gpu_check_runs_on_cpu_with_the_tiny_model(tmp_path, one_thread):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--model", "tiny-random", "--steps", "1", "--batch-size", "2", "--max-len", "32",
                           "--score", "4", "--gen", "2", "--new", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(result[k] > 0 for k in ("train_tokens_per_s", "score_tokens_per_s", "generate_tokens_per_s"))
    assert result["estimate"]["pack_s"] > 0 and "laft@L" in result["estimate"]["stage_s"]


# --------------------------------------------------------------------------- multi-process training
@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) trains as one process with grad_accum 2
    (the same micro-batches make each optimizer step), and only rank 0 writes. Measured on the
    loaded 2-core box: 16 s + 30 s; losses agree to 1e-6. `accelerate launch --cpu` alone
    starts ONE process (its simple launcher): ACCELERATE_USE_CPU=1 with --multi_gpu (torchrun)
    is what starts two on a machine without GPUs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    repo = Path(__file__).resolve().parents[1]
    script = repo / "tests" / "helpers" / "ddp_train.py"
    env = {**os.environ, "PYTHONPATH": str(repo), "ACCELERATE_USE_CPU": "1"}
    bin_dir = Path(sys.executable).parent
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "2"], env=env, capture_output=True,
                         text=True, timeout=900)
    two = subprocess.run([str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "29617", str(script), str(tmp_path / "two"), "1"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "PROCESSES 2" in two.stdout and two.stdout.count("PROCESSES") == 1  # rank 0 reports once
    curves = [[line.split("\t") for line in (tmp_path / r / "curve.tsv").read_text().splitlines()[1:]]
              for r in ("one", "two")]
    assert [c[:2] for c in curves[0]] == [c[:2] for c in curves[1]]  # same steps, same tokens
    assert all(abs(float(a[2]) - float(b[2])) < 1e-4 for a, b in zip(*curves))  # stated tolerance
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["adapter", "curve.tsv"]  # written once, no temp
    w1, w2 = (load_file(tmp_path / r / "adapter" / "adapter_model.safetensors") for r in ("one", "two"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
