"""pipeline.train: loss masking, packing, bucketing, the loss math, resume, determinism, reward models."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pipeline import batching as B
from pipeline import lm_parts as P
from pipeline import losses as L
from pipeline import train as T

TINY = "tiny-random"
FAST = {"batch_size": 4, "max_len": 64, "progress": False, "checkpoint_every": 0, "lr": 1e-3}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    from pipeline.models import load_tokenizer

    return load_tokenizer(TINY)


def sft_examples(n=24):
    return [{"prompt": f"Translate to Galician: the house number {i}\n", "response": f"a casa número {i}"}
            for i in range(n)]


def adapter_tensors(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- encoding
def test_labels_ignore_exactly_the_prompt(tok):
    prompt, response = "Instruction: say hi\n", "hi there"
    ids, labels = B.encode_example(tok, prompt, response, max_len=100)
    n_head = len(B.start_ids(tok)) + len(tok(prompt, add_special_tokens=False)["input_ids"])
    n_body = len(tok(response, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert len(ids) == len(labels) == n_head + n_body
    assert labels[:n_head] == [L.IGNORE] * n_head
    assert labels[n_head:] == ids[n_head:]
    assert ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id


def test_plain_lm_example_labels_every_text_token(tok):
    ids, labels = B.encode_example(tok, "", "hello world", max_len=100)
    assert labels[0] == L.IGNORE and labels[1:] == ids[1:]


def test_truncation_cuts_the_response_and_drops_prompt_only_examples(tok):
    ids, labels = B.encode_example(tok, "a b c", "d e f g h i j k l", max_len=6)
    prompt_len = len(tok("a b c", add_special_tokens=False)["input_ids"])
    assert len(ids) == 6 and labels.count(L.IGNORE) == len(B.start_ids(tok)) + prompt_len
    assert B.encode_example(tok, "a b c d e f g h", "x", max_len=4) is None


def test_packing_keeps_every_token_in_order():
    seqs = [([1, 10, 11, 2], [-100, 10, 11, 2]), ([1, 20, 2], [-100, 20, 2]), ([1, 30, 31, 32, 2], [-100, 30, 31, 32, 2])]
    blocks = B.pack_sequences(seqs, block=5)
    assert [b[0] for b in blocks] == [[1, 10, 11, 2, 1], [20, 2, 1, 30, 31], [32, 2]]
    assert sum((b[1] for b in blocks), []) == sum((s[1] for s in seqs), [])
    assert all(len(b[0]) == 5 for b in blocks[:-1])


def test_packed_blocks_start_with_bos_and_lose_no_text():
    seqs = [([1, 10, 11, 2], [-100, 10, 11, 2]), ([1, 20, 2], [-100, 20, 2]), ([1, 30, 31, 32, 2], [-100, 30, 31, 32, 2])]
    blocks = B.pack_sequences(seqs, block=5, start=[1])
    assert [b[0] for b in blocks] == [[1, 10, 11, 2, 1], [1, 20, 2, 1, 30], [1, 31, 32, 2]]
    assert all(b[0][0] == 1 and len(b[0]) <= 5 for b in blocks)
    text = [t for b in blocks for t in b[1] if t != L.IGNORE]
    assert text == [t for s in seqs for t in s[1] if t != L.IGNORE]  # every label once, in order


def test_bucketing_covers_each_example_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 100) for _ in range(203)]
    batches = B.bucket_batches(lengths, 8, random.Random(1), window=8)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert all(len(b) <= 8 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.15  # random batches of 8 pad ~1.5x here
    assert B.bucket_batches(lengths, 8, random.Random(1), 8) == batches


def test_collate_pads_right_and_ignores_padding():
    b = B.collate([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["n_tokens"] == 4


# --------------------------------------------------------------------------- loss math
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_linear_cross_entropy_matches_full_logits(softcap):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    got = L.linear_cross_entropy(h, w, y, chunk=8, softcap=softcap)
    got.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    logits = h @ w.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    want = F.cross_entropy(logits, y, reduction="sum")
    want.backward()
    assert torch.allclose(got.double(), want, rtol=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-9) and torch.allclose(gw, w.grad, atol=1e-9)


def test_linear_cross_entropy_with_frozen_weight_and_no_rows():
    w = torch.randn(10, 4)
    assert L.linear_cross_entropy(torch.zeros(0, 4), w, torch.zeros(0, dtype=torch.long)).item() == 0.0
    h = torch.randn(3, 4, requires_grad=True)
    L.linear_cross_entropy(h, w, torch.tensor([1, 2, 3])).backward()
    assert h.grad is not None and w.grad is None


def test_bradley_terry_loss_hand_computed():
    # pair 1: margin 1 -> log(1 + e^-1) = 0.313262; pair 2: margin 0 -> log 2 = 0.693147
    loss = L.bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert L.bradley_terry_loss(torch.tensor([100.0]), torch.tensor([-100.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_lr_schedule_is_linear_with_warmup():
    assert [L.lr_at(s, 4, 1.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [round(L.lr_at(s, 6, 1.0, warmup=2), 3) for s in range(4)] == [0.5, 1.0, 1.0, 0.75]


def test_causal_loss_equals_transformers_loss_on_label_positions(tok):
    from pipeline.models import load_model

    model, _ = load_model(TINY)
    seqs = [B.encode_example(tok, "Translate: cat\n", "gato", 64), B.encode_example(tok, "Q: 2+2\n", "four or so", 64)]
    b = B.collate(seqs, tok.pad_token_id)
    with torch.no_grad():
        mine, n = P.CausalLMLoss(model, chunk=3)(b["input_ids"], b["labels"])
        theirs = model(input_ids=b["input_ids"], labels=b["labels"]).loss
    assert n.item() == sum(sum(1 for x in s[1][1:] if x != L.IGNORE) for s in seqs)
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_trimmed_output_vocab_is_cross_entropy_over_the_support(tok):
    from pipeline.models import load_model

    model, _ = load_model(TINY)
    seqs = [B.encode_example(tok, "Translate: cat\n", "gato", 64), B.encode_example(tok, "Q: 2+2\n", "four", 64)]
    b = B.collate(seqs, tok.pad_token_id)
    support = P.label_support(seqs)
    assert support.tolist() == sorted({t for _, labs in seqs for t in labs if t != L.IGNORE})
    loss = P.CausalLMLoss(model, chunk=4)
    loss.set_support(support)
    with torch.no_grad():
        mine, _ = loss(b["input_ids"], b["labels"])
        logits = model(input_ids=b["input_ids"]).logits[:, :-1][:, :, support]  # (B, T-1, S)
        target = b["labels"][:, 1:]
        keep = target != L.IGNORE
        remapped = torch.searchsorted(support, target[keep])
        want = F.cross_entropy(logits[keep], remapped)
    assert mine.item() == pytest.approx(want.item(), rel=1e-5)


def test_mass_support_adds_probable_tokens_until_the_mass_is_covered():
    probs = torch.tensor([0.30, 0.05, 0.25, 0.02, 0.20, 0.18])
    support, covered = P.mass_support(probs, torch.tensor([1]), mass=0.75, max_size=10)
    assert support.tolist() == [0, 1, 2, 4] and covered == pytest.approx(0.80)  # 0.05 + 0.30 + 0.25 + 0.20
    support, covered = P.mass_support(probs, torch.tensor([1]), mass=0.99, max_size=3)
    assert support.tolist() == [0, 1, 2] and covered == pytest.approx(0.60)
    support, covered = P.mass_support(probs, torch.tensor([0, 2]), mass=0.5, max_size=1)
    assert support.tolist() == [0, 2] and covered == pytest.approx(0.55)


def test_trimmed_training_reports_its_support(tmp_path):
    m = T.train_causal_lm(TINY, sft_examples(), tmp_path / "o", {**FAST, "max_steps": 2, "output_vocab": "data",
                                                                  "output_vocab_mass": 0.5, "output_vocab_max": 3000})
    assert 0.5 <= m["output_vocab_coverage"] <= 1.0 and m["output_vocab"] <= 3000
    assert math.isfinite(m["final_loss"])


def test_bf16_autocast_path_trains(tmp_path):
    # functional check only: CPUs without bf16 matrix units run it slowly, GPUs run it for real
    m = T.train_causal_lm(TINY, sft_examples(8), tmp_path / "o", {**FAST, "max_steps": 1, "mixed_precision": "bf16"})
    assert m["mixed_precision"] == "bf16" and math.isfinite(m["final_loss"])
    tensors = adapter_tensors(tmp_path / "o")
    assert all(t.dtype == torch.float32 for t in tensors.values())  # LoRA weights stay fp32


def test_unknown_setting_is_a_one_line_error():
    from pipeline.errors import PolyalignError

    with pytest.raises(PolyalignError, match="lora_rank"):
        T.settings({"lora_rank": 8})
    with pytest.raises(PolyalignError, match="output_vocab"):
        T.settings({"output_vocab": "small"})


def test_params_train_section_sits_between_defaults_and_stage_settings(tmp_path, monkeypatch):
    from pipeline.errors import PolyalignError

    (tmp_path / "params.yaml").write_text("train:\n  launch: python\n  lr: 0.001\n  output_vocab: data\n")
    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))
    s = T.settings({"lr": 0.01})
    assert s["lr"] == 0.01 and s["output_vocab"] == "data" and "launch" not in s
    assert s["batch_size"] == T.DEFAULTS["batch_size"]
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 0.001\n")
    with pytest.raises(PolyalignError, match="learning_rate"):
        T.settings({})


def test_auto_precision_is_fp32_without_bf16_hardware(monkeypatch):
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert T.resolve_precision("auto") == "no" and T.resolve_precision("bf16") == "bf16"


# --------------------------------------------------------------------------- training runs
def test_training_writes_adapter_curve_and_is_deterministic(tmp_path):
    cfg = {**FAST, "max_steps": 3, "checkpoint_dir": str(tmp_path / "ck")}
    m1 = T.train_causal_lm(TINY, sft_examples(), tmp_path / "a", cfg)
    m2 = T.train_causal_lm(TINY, sft_examples(), tmp_path / "b", cfg)
    curve = (tmp_path / "a" / "curve.tsv").read_text().splitlines()
    assert curve[0] == "step\ttokens\tloss\tlr" and len(curve) == 4
    assert m1["steps"] == 3 and m1["train_tokens"] > 0 and m1["peak_rss_gb"] > 0
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m1["final_loss"] == m2["final_loss"]
    assert not (tmp_path / "ck").exists()  # removed once the adapter is written


def test_adapter_config_is_the_same_bytes_whatever_the_string_hashing(tmp_path):
    """peft writes target_modules in set order (Python's per-process string hashing): the same
    training wrote a different adapter_config.json from run to run, and DVC reran every later stage.
    Three hash seeds, one file, its modules sorted."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pipeline import train as T; "
            "T.train_causal_lm('tiny-random', [{'prompt': 'Say: ', 'response': 'hello there'}] * 4, sys.argv[1], "
            "{'batch_size': 4, 'max_len': 32, 'progress': False, 'checkpoint_every': 0, 'max_steps': 1, "
            "'target_modules': ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj']})")
    root = Path(__file__).resolve().parents[1]
    texts = set()
    for seed in (1, 2, 3):
        out = tmp_path / str(seed)
        subprocess.run([sys.executable, "-c", code, str(out)], cwd=root, check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)})
        texts.add((out / "adapter" / "adapter_config.json").read_text())
    assert len(texts) == 1
    modules = json.loads(texts.pop())["target_modules"]
    assert modules == sorted(modules) and len(modules) == 5


def test_full_finetuning_learns_a_repeated_example(tmp_path):
    # full fine-tuning also trains the tied output embedding through linear_cross_entropy's weight gradient
    # (tiny-random's LoRA alone barely moves: its frozen random embeddings cap the logits near uniform)
    ex = [{"prompt": "Say: ", "response": "the same sentence every time"}] * 16
    T.train_causal_lm(TINY, ex, tmp_path / "o", {**FAST, "epochs": 4, "lr": 1e-2, "full_finetune": True})
    losses = [float(line.split("\t")[2]) for line in (tmp_path / "o" / "curve.tsv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0] * 0.5
    assert (tmp_path / "o" / "adapter" / "model.safetensors").exists()


@pytest.mark.parametrize("vocab", ["full", "data"])
def test_resume_matches_uninterrupted_training(tmp_path, monkeypatch, vocab, tok):
    # with output_vocab=data the crash comes while the support is still being probed (3 steps)
    cfg = {**FAST, "max_steps": 4, "checkpoint_every": 2, "resume": True, "lora_dropout": 0.1,
           "output_vocab": vocab, "output_vocab_probe": 3, "output_vocab_mass": 0.5}
    straight = T.train_causal_lm(TINY, sft_examples(), tmp_path / "straight", {**cfg, "checkpoint_dir": str(tmp_path / "c1")})

    save = T._Run.save

    def save_then_die(self):
        save(self)
        raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    monkeypatch.setattr(T._Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        T.train_causal_lm(TINY, sft_examples(), tmp_path / "resumed", {**cfg, "checkpoint_dir": str(tmp_path / "c2")})
    monkeypatch.setattr(T._Run, "save", save)
    assert (tmp_path / "c2" / "polyalign_state.json").exists()
    resumed = T.train_causal_lm(TINY, sft_examples(), tmp_path / "resumed", {**cfg, "checkpoint_dir": str(tmp_path / "c2")})
    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "curve.tsv").read_text() == (tmp_path / "resumed" / "curve.tsv").read_text()
    assert resumed["train_tokens"] == straight["train_tokens"]
    assert resumed["output_vocab"] == straight["output_vocab"]
    assert (resumed["output_vocab"] < len(tok)) == (vocab == "data")


def test_plain_lm_examples_are_packed_whole_and_long_ones_split(tmp_path, tok):
    ex = [{"prompt": "", "response": f"line {i} of some monolingual text"} for i in range(30)]
    ex.append({"prompt": "", "response": "a very long line " * 20})
    s = T.settings({**FAST, "max_len": 32})
    units, counts = T.causal_units(tok, ex, s)
    assert counts["packed"] and len(units) > len(ex) and all(len(u[0]) <= 32 and u[0][0] == tok.bos_token_id for u in units)
    labelled = sum(sum(1 for t in u[1] if t != L.IGNORE) for u in units)
    assert labelled == sum(len(B.encode_example(tok, "", e["response"], 10**6)[0]) - 1 for e in ex)
    bins = B.fill_bins(list(range(len(units))), [len(u[0]) for u in units], 32)
    assert sorted(i for b in bins for i in b) == list(range(len(units)))
    assert all(sum(len(units[i][0]) for i in b) <= 32 for b in bins)
    m = T.train_causal_lm(TINY, ex, tmp_path / "lm", {**FAST, "max_len": 32, "batch_size": 2, "max_steps": 2})
    assert m["packed"] and 0 < m["train_tokens"] <= 2 * 2 * 32


def test_packed_row_loss_equals_separate_examples(tok):
    """Block-diagonal attention: packing three examples changes no example's loss."""
    from pipeline.models import load_model

    model, _ = load_model(TINY, dtype=torch.float64)
    units = [B.encode_example(tok, "", text, 64) for text in ("Muli bwanji?", "the house is red", "Namaste")]
    loss = P.CausalLMLoss(model, chunk=8)
    with torch.no_grad():
        b = B.collate_packed([units], tok.pad_token_id)
        packed, n = loss(b["input_ids"], b["labels"], b["position_ids"])
        alone = [loss(*[t[None] for t in map(torch.tensor, u)]) for u in units]
    total = sum(loss_k * k for loss_k, k in alone)
    assert n.item() == sum(k.item() for _, k in alone)
    assert (packed * n).item() == pytest.approx(total.item(), rel=1e-9)
    assert b["position_ids"][0].tolist()[:len(units[0][0]) + 1] == list(range(len(units[0][0]))) + [0]


def test_load_trained_merges_lora_into_the_same_function(tmp_path, tok):
    from peft import PeftModel

    from pipeline.models import load_model

    T.train_causal_lm(TINY, sft_examples(), tmp_path / "o", {**FAST, "max_steps": 2, "lr": 1e-2})
    merged, _ = T.load_trained(TINY, tmp_path / "o" / "adapter")
    base, _ = load_model(TINY)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "o" / "adapter").eval()
    ids = torch.tensor([B.encode_example(tok, "Translate: x\n", "y", 64)[0]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, load_model(TINY)[0](ids).logits, atol=1e-4)


def test_reward_model_trains_and_scores(tmp_path):
    pairs = [{"chosen": f"Human: hi {i}\n\nAssistant: Hello, how can I help?",
              "rejected": f"Human: hi {i}\n\nAssistant: go away"} for i in range(16)]
    m = T.train_reward_model(TINY, pairs, tmp_path / "rm", {**FAST, "max_steps": 6, "lr": 1e-2})
    assert m["steps"] == 6 and 0.0 <= m["final_accuracy"] <= 1.0
    model, tok = T.load_trained(TINY, tmp_path / "rm" / "adapter")
    assert model.config.num_labels == 1
    texts = [p["chosen"] for p in pairs[:3]] + [pairs[0]["rejected"]]
    batched = T.reward_scores(model, tok, texts, batch_size=4)
    single = [T.reward_scores(model, tok, [t], batch_size=1)[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-4)
    assert batched[0] > batched[3]  # six steps on one contrast already separate it


def test_dvclive_tracker_gets_every_step_and_leaves_the_project_alone(tmp_path, monkeypatch):
    """train.log_with: dvclive logs the curve through accelerate into the cache, not dvc.yaml."""
    import shutil

    from pipeline.paths import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))   # curve_file's DVC plot curves land here
    cfg = {**FAST, "max_steps": 3, "log_with": "dvclive", "curve_file": f"test.{tmp_path.name}"}
    where = T.tracker_dir(T.settings(cfg), "")
    assert where == cache_dir() / "trackers" / f"test.{tmp_path.name}"
    try:
        T.train_causal_lm(TINY, sft_examples(), tmp_path / "o", cfg)
        loss = (where / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    finally:
        shutil.rmtree(where, ignore_errors=True)
    curve = (tmp_path / "o" / "curve.tsv").read_text().splitlines()[1:]
    assert loss[0] == "step\tloss" and [line.split("\t")[0] for line in loss[1:]] == ["1", "2", "3"]
    assert [round(float(x.split("\t")[-1]), 5) for x in loss[1:]] == [round(float(c.split("\t")[2]), 5) for c in curve]
    assert not (tmp_path / "dvc.yaml").exists() and not (tmp_path / "dvclive").exists()


def test_missing_tracker_package_is_a_one_line_error(tmp_path, monkeypatch):
    from pipeline.errors import PolyalignError

    monkeypatch.setitem(T.TRACKER_PACKAGES, "mlflow", "no_such_package_polyalign")
    with pytest.raises(PolyalignError, match="train.log_with.*pip install"):
        T.train_causal_lm(TINY, sft_examples(4), tmp_path / "o", {**FAST, "max_steps": 1, "log_with": "mlflow"})
