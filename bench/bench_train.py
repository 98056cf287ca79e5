"""Training throughput: pipeline.train against a plain transformers `Trainer`, same data, same settings.

One run = one variant (`trainer` or `polyalign`) on one scenario, in its own process so
that peak memory is that variant's alone; bench/run_all.py runs them side by side.

Scenarios, both from NTREX-128 (English -> Galician, the first sentences of the file):
- `sft`: taco_sft-like prompt/response pairs (translation prompt, Galician answer), loss
  on the response only;
- `lm`: laft-like plain language modelling on the Galician sentences.

Both variants see exactly the same examples (steps x batch, one epoch), the same
tokenisation (pipeline.train.encode_example), LoRA r=8 on q/v, AdamW, lr 2e-4 with linear
decay, batch 8, gradient clipping 1.0. The Trainer pads each batch to its longest
example (DataCollatorForSeq2Seq, right padding) and computes fp32 logits everywhere.
Reported: real (non-pad) tokens/s over the training loop (model loading excluded), peak
RSS, mean training loss of the last 10 steps, and held-out loss (mean NLL per response
token on `eval` unseen examples) computed by the same scorer for both.

    python bench/bench_train.py --variant polyalign --scenario sft --steps 12 --out result.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "gemma-3-270m"
PROMPT = "Translate from English to Galician.\nEnglish: {en}\nGalician:"
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
LR, BATCH, MAX_LEN, SEED = 2e-4, 8, 256, 0


def ntrex_pairs() -> list[tuple[str, str]]:
    from pipeline.sources import read
    from pipeline.text import ntrex_source

    return list(zip(read(ntrex_source("eng")), read(ntrex_source("glg"))))


def examples(scenario: str, start: int, n: int) -> list[dict]:
    pairs = ntrex_pairs()[start:start + n]
    if scenario == "sft":
        return [{"prompt": PROMPT.format(en=en), "response": " " + gl} for en, gl in pairs]
    return [{"prompt": "", "response": gl} for _, gl in pairs]


def heldout_loss(model, tok, evals: list[dict]) -> float:
    """Mean NLL (nats) per response token on held-out examples, with pipeline.generate's scorer."""
    import torch

    from pipeline.generate import _encode_prompt, sum_logprobs

    items = [(_encode_prompt(tok, e["prompt"]), tok(e["response"], add_special_tokens=False)["input_ids"]
              + [tok.eos_token_id]) for e in evals]
    model.eval()
    with torch.inference_mode():
        total = sum_logprobs(model, items, batch_size=8)
    return -sum(total) / sum(len(t) for _, t in items)


def block_len(train: list[dict], steps: int) -> int:
    """Packed row length for one row per optimizer step holding about the Trainer's 8 sentences
    (10% slack for the greedy fill), so both runs make ~`steps` updates over the same examples."""
    from pipeline.batching import encode_example
    from pipeline.models import load_tokenizer

    tok = load_tokenizer(MODEL)
    total = sum(len(encode_example(tok, ex["prompt"], ex["response"], MAX_LEN)[0]) for ex in train)
    return math.ceil(1.1 * total / steps)


def run_polyalign(train: list[dict], evals: list[dict], steps: int, cfg: dict) -> dict:
    from pipeline.train import load_trained, peak_rss_gb, train_causal_lm

    packed = all(not ex["prompt"] for ex in train)
    shape = {"batch_size": 1, "max_len": block_len(train, steps)} if packed else {"batch_size": BATCH,
                                                                                   "max_len": MAX_LEN}
    with tempfile.TemporaryDirectory() as tmp:
        m = train_causal_lm(MODEL, train, Path(tmp), {**LORA, "lr": LR, **shape, "seed": SEED, "epochs": 1,
                                                       "max_steps": 0 if packed else steps, "checkpoint_every": 0,
                                                       "resume": False, "grad_accum": 1, **cfg})
        rss = peak_rss_gb()
        model, tok = load_trained(MODEL, Path(tmp) / "adapter")
    return {"tokens": m["train_tokens"], "steps": m["steps"], "loop_s": m["loop_s"], "loop_cpu_s": m["loop_cpu_s"],
            "tokens_per_s": m["tokens_per_s"], "output_vocab": m["output_vocab"],
            "output_vocab_coverage": m.get("output_vocab_coverage"),
            "final_loss": m["final_loss"], "peak_rss_gb": rss, "heldout_loss": heldout_loss(model, tok, evals),
            "mixed_precision": m["mixed_precision"], "packed": m["packed"]}


def run_trainer(train: list[dict], evals: list[dict], steps: int, cfg: dict) -> dict:
    """The plain recipe: fp32 model, peft LoRA, Trainer with dynamic padding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from pipeline.batching import encode_example
    from pipeline.models import load_model
    from pipeline.seeding import seed_everything
    from pipeline.train import peak_rss_gb

    seed_everything(SEED)
    model, tok = load_model(MODEL, dtype=torch.float32)
    tok.padding_side = "right"
    model = get_peft_model(model, LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], task_type="CAUSAL_LM",
                                             lora_dropout=LORA["lora_dropout"], target_modules=LORA["target_modules"]))
    data = []
    for ex in train:
        ids, labels = encode_example(tok, ex["prompt"], ex["response"], MAX_LEN)
        data.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    counted = {"tokens": 0}

    def collate(batch):
        out = collator(batch)
        counted["tokens"] += int(out["attention_mask"].sum())
        return out

    clock, losses = {}, []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                                 lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                                 logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=SEED,
                                 dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    loop = clock["end"] - clock["start"]
    tail = losses[-10:]
    return {"tokens": counted["tokens"], "steps": steps, "loop_s": loop, "loop_cpu_s": clock["cpu_end"] - clock["cpu_start"],
            "tokens_per_s": counted["tokens"] / loop, "output_vocab": len(tok),
            "final_loss": sum(tail) / len(tail), "peak_rss_gb": peak_rss_gb(),
            "heldout_loss": heldout_loss(model, tok, evals), "mixed_precision": "no"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["trainer", "polyalign"], required=True)
    parser.add_argument("--scenario", choices=["sft", "lm"], default="sft")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval", type=int, default=32, help="held-out examples for the loss check")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cfg", default="{}", help="JSON of extra pipeline.train settings (polyalign only)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.steps * BATCH
    train, evals = examples(args.scenario, 0, n), examples(args.scenario, n, args.eval)
    runner = run_trainer if args.variant == "trainer" else run_polyalign
    result = runner(train, evals, args.steps, json.loads(args.cfg))
    result.update(variant=args.variant, scenario=args.scenario, examples=n, threads=torch.get_num_threads())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if math.isfinite(result["heldout_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
