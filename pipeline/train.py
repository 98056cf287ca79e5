"""The shared training helper: LoRA (or full) causal-LM fine-tuning and Bradley–Terry reward models.

One loop for every training stage (taco_sft, laft, maft, culture_sft, rm_train, rm_transfer).
It runs unchanged on CPU, one GPU, or many GPUs/machines under `accelerate launch`
(accelerate's `Accelerator` does device placement, DDP/FSDP wrapping, bf16 autocast and
gradient accumulation; nothing here is home-made distribution).

Losses live in pipeline/losses.py and pipeline/lm_parts.py, batching in pipeline/batching.py;
why this loop is faster than a plain transformers `Trainer`, and what was measured, is in
bench/README.md (bench/bench_train.py measures both side by side).

Checkpoints (trainable weights, optimizer, RNG, step) go every `checkpoint_every` steps to
`checkpoint_dir`; by default a content-addressed folder in the polyalign cache, because
stages write `out_dir` through `io.atomic_path` (a temporary folder that vanishes when a
run dies) and DVC deletes a stage's outputs before rerunning it. `resume: true` continues
exactly the same run (same base, examples and settings) from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import shutil
import time
from pathlib import Path

import torch

from pipeline import io
from pipeline.batching import bucket_batches, collate, collate_packed, encode_example, fill_bins, pack_sequences, start_ids
from pipeline.errors import PolyalignError
from pipeline.lm_parts import CausalLMLoss, RewardLoss, label_support, lm_parts, mass_support, packing_honoured
from pipeline.losses import lr_at
from pipeline.provenance import cpu_has_bf16

log = logging.getLogger("polyalign.train")

TRAINING_INFO = "training.json"  # written next to the adapter: head, base, full_finetune

# Settings of train_causal_lm / train_reward_model. Stages pass their params.yaml section.
DEFAULTS: dict = {
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],   # or "auto": peft's default for the model type
    "full_finetune": False,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "max_grad_norm": 1.0,          # the transformers Trainer's default
    "max_steps": 0,                # 0: run `epochs` epochs
    "epochs": 1,
    "batch_size": 8,               # examples (packed: rows of max_len tokens) per micro-batch per process
    "grad_accum": 1,
    "max_len": 512,
    "seed": 0,
    "resume": False,
    "checkpoint_every": 50,        # optimizer steps; 0 disables checkpoints
    "checkpoint_dir": None,        # None: <cache>/checkpoints/<hash of base, examples, settings>
    "keep_checkpoint": False,      # delete the checkpoint once the adapter is written
    "mixed_precision": "auto",     # auto | bf16 | no
    # Tokens per output-layer chunk: bounds the logits buffer to chunk x vocab x 4 bytes
    # (268 MB for Gemma's 262k vocabulary). Gemma head forward+backward, 512 tokens, 1 thread:
    # 8.6 / 7.0 / 6.6 CPU-s with chunks of 64 / 128 / 256 (bench notes, 2026-11-23).
    "logits_chunk": 256,
    # full: softmax over the whole vocabulary (exact). data: the first `output_vocab_probe`
    # optimizer steps train on the full vocabulary and sum its softmax at the label positions;
    # from then on the softmax runs over the label tokens plus the most probable other tokens,
    # until they hold `output_vocab_mass` of that probability or `output_vocab_max` ids. The
    # trimmed-vocabulary idea of Alabi et al. applied to the loss only: the model keeps its full
    # vocabulary. Coverage is returned as `output_vocab_coverage`; bench/bench_train.py checks
    # held-out full-vocabulary loss against the exact run.
    "output_vocab": "full",
    "output_vocab_mass": 0.99,
    "output_vocab_max": 16384,
    "output_vocab_probe": 2,
    "packing": "auto",             # auto: pack when every prompt is "", else length-bucket
    "order": "shuffle",            # shuffle | given (curriculum: batches of consecutive examples, in order)
    "bucket_window": 32,           # batches per sorted window when length-bucketing
    "progress": True,
    "curve_file": None,            # `<pack>.<stage>`: also write the DVC plot curves (curve_file())
    # An experiment tracker, through accelerate: each optimizer step's loss, lr, tokens/s and
    # tokens go to <cache>/trackers/<curve_file or run key>/ (tracker_dir()). Off by default;
    # the tracker's package must be installed (dvclive is; tensorboard, wandb, mlflow are not).
    "log_with": "none",            # none | dvclive | tensorboard | wandb | mlflow
}


CHOICES = {"mixed_precision": ("auto", "bf16", "no"), "output_vocab": ("full", "data"),
           "packing": ("auto", True, False), "order": ("shuffle", "given"),
           "log_with": ("none", "dvclive", "tensorboard", "wandb", "mlflow")}
TRACKER_PACKAGES = {"dvclive": "dvclive", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


# --------------------------------------------------------------------------- set-up helpers
def shared_params() -> dict:
    """params.yaml `train` (profile applied): settings every training stage shares, minus `launch`.

    `launch` is how DVC starts training stages (`python` or an `accelerate launch ...` line).
    """
    from pipeline.config import load_params, params_path, section

    if not params_path().exists():
        return {}
    params = load_params()
    if "train" not in params:
        return {}
    return {k: v for k, v in section("train", params).items() if k != "launch"}


def settings(cfg: dict) -> dict:
    """DEFAULTS < params.yaml `train` < the stage's `cfg`; unknown keys are a one-line error."""
    from pipeline.errors import did_you_mean

    shared = shared_params()
    for source, keys in (("train", shared), ("(stage settings)", cfg)):
        unknown = [k for k in keys if k not in DEFAULTS]
        if unknown:
            raise PolyalignError("params.yaml", f"{source}: {unknown[0]}", "unknown training setting",
                                 did_you_mean(unknown[0], DEFAULTS) or f"use one of {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **shared, **cfg}
    for key, allowed in CHOICES.items():
        if out[key] not in allowed:
            raise PolyalignError("params.yaml", key, f"'{out[key]}' is not one of {list(allowed)}",
                                 f"use one of {list(allowed)}")
    return out


def resolve_precision(setting: str) -> str:
    """'auto' -> 'bf16' on a bf16-capable GPU or CPU, else 'no' (fp32)."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16() else "no"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _seed(seed: int) -> None:
    from pipeline.seeding import seed_everything

    seed_everything(seed)


def _load_base(base: str, head: str, precision: str, full: bool):
    """Frozen weights in bf16 when autocasting to bf16 (half the memory); fp32 for full fine-tuning."""
    from pipeline.models import load_model

    dtype = torch.bfloat16 if precision == "bf16" and not full else torch.float32
    return load_model(base, head=head, dtype=dtype)


def _wrap_trainable(model, s: dict, task: str):
    """LoRA adapters (fp32) on `target_modules`, or every weight trainable for full fine-tuning."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if s["full_finetune"]:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    # "auto": peft's per-architecture default (q_proj/v_proj, c_attn for GPT-2,
    # query_key_value for BLOOM/GPT-NeoX, qkv_proj for Phi-3, ...)
    targets = None if s["target_modules"] == "auto" else list(s["target_modules"])
    config = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                        target_modules=targets, task_type=task, bias="none")
    if targets is None and model.config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        config.target_modules = "all-linear"  # peft has no default for this type (Phi-3, XGLM)
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:  # no module matches / no default for this model type
        raise PolyalignError("params.yaml", "target_modules", str(exc).splitlines()[0][:160],
                             "name modules this model has, or use target_modules: auto") from None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def run_key(base: str, data, s: dict, kind: str) -> str:
    """Hash of everything that determines a run (not resume/checkpoint/progress settings)."""
    skip = {"resume", "checkpoint_dir", "keep_checkpoint", "progress", "checkpoint_every", "curve_file", "log_with"}
    payload = json.dumps({"kind": kind, "base": base, "cfg": {k: v for k, v in s.items() if k not in skip},
                          "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_path(s: dict, key: str) -> Path:
    if s["checkpoint_dir"]:
        return Path(s["checkpoint_dir"])
    from pipeline.paths import cache_dir

    return cache_dir() / "checkpoints" / key


# --------------------------------------------------------------------------- the loop
def _accelerator(precision: str, grad_accum: int, log_with: str = "none", tracker_dir: Path | None = None):
    """accelerate's Accelerator; a single process may switch precision between runs (tests do)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if (AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision
            and PartialState().num_processes == 1):
        AcceleratorState._reset_state()  # accelerate otherwise refuses a second precision per process
    if log_with == "none":
        return Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum, log_with=log_with,
                       project_dir=str(tracker_dir))


def tracker_dir(s: dict, key: str) -> Path:
    """Where `log_with` writes: <cache>/trackers/<curve_file, else the run key>."""
    from pipeline.paths import cache_dir

    return cache_dir() / "trackers" / (s["curve_file"] or key)


def _start_tracker(acc, s: dict, where: Path) -> None:
    """init_trackers with the run's settings as its configuration (dvclive: no DVC experiment or
    dvc.yaml of its own, since DVC already runs the stage)."""
    import importlib.util

    name = s["log_with"]
    if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
        raise PolyalignError("params.yaml", "train.log_with", f"tracker '{name}' is not installed",
                             f"pip install {TRACKER_PACKAGES[name]}, or set log_with: none")
    kwargs = {"dvclive": {"dir": str(where), "save_dvc_exp": False, "dvcyaml": None},
              "mlflow": {"logging_dir": str(where)}}
    config = {k: v for k, v in s.items() if isinstance(v, (bool, int, float, str))}
    acc.init_trackers(where.name.replace(".", "_"), config=config,
                      init_kwargs={name: kwargs[name]} if name in kwargs else {})


class _Run:
    """State of one training run: accelerator, prepared module, optimizer, step, curve."""

    def __init__(self, module, s: dict, precision: str, key: str, ckpt: Path):
        self.s, self.key, self.ckpt = s, key, ckpt
        where = tracker_dir(s, key)
        self.acc = _accelerator(precision, s["grad_accum"], s["log_with"], where)
        if s["log_with"] != "none":
            _start_tracker(self.acc, s, where)
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])
        self.module, self.opt = self.acc.prepare(module, opt)
        self.acc.register_save_state_pre_hook(self._trainable_only)
        self.step, self.tokens, self.curve = 0, 0, []
        self.extra_save, self.extra_load = [], []  # (folder) -> dict and (folder, dict) -> None hooks

    @staticmethod
    def _trainable_only(models, weights, output_dir):
        """Checkpoint only trainable tensors: LoRA checkpoints stay a few MB, not the frozen base."""
        for model, state in zip(models, weights):
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            names |= {n.replace("module.", "", 1) for n in names}
            for k in [k for k in state if k not in names]:
                del state[k]

    def save(self) -> None:
        """Checkpoint atomically: write a sibling folder, then swap it in."""
        tmp, old = self.ckpt.with_name(self.ckpt.name + ".tmp"), self.ckpt.with_name(self.ckpt.name + ".old")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # every process writes its own RNG state into it
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        extra = [hook(tmp) for hook in self.extra_save]
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            io.write_json(tmp / "polyalign_state.json", {"key": self.key, "step": self.step, "tokens": self.tokens,
                                                          "curve": self.curve, "extra": extra})
            shutil.rmtree(old, ignore_errors=True)
            if self.ckpt.exists():
                self.ckpt.rename(old)
            tmp.rename(self.ckpt)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def try_resume(self) -> None:
        """Continue from the checkpoint of this exact run, if any (the .old copy if a swap was cut short)."""
        for path in (self.ckpt, self.ckpt.with_name(self.ckpt.name + ".old")):
            state_file = path / "polyalign_state.json"
            if state_file.exists():
                state = io.read_json(state_file)
                if state.get("key") != self.key:
                    return
                self.acc.load_state(str(path), strict=False)
                self.step, self.tokens, self.curve = state["step"], state["tokens"], state["curve"]
                for hook, extra in zip(self.extra_load, state.get("extra", [])):
                    hook(path, extra)
                return

    def reduce_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return float(value)
        t = torch.tensor(float(value), device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum"))


def _micro_batches(plan: list, step: int, acc, ga: int) -> list:
    """This process's micro-batches of optimizer step `step` (interleaved across processes)."""
    world, rank = acc.num_processes, acc.process_index
    base = step * ga * world
    return [plan[base + m * world + rank] for m in range(ga)]


def _fit(run: _Run, plan: list, total: int, forward, desc: str, after_step=None) -> dict:
    """The optimizer loop shared by both trainers. `forward(batch) -> (loss, n_real_tokens)`."""
    from tqdm.auto import tqdm

    s, acc = run.s, run.acc
    start, cpu_start = time.perf_counter(), time.process_time()
    start_tokens, start_step = run.tokens, run.step
    log.info("%s: optimizer steps %d to %d (%d micro-batches of %d, %s precision, %d process(es))", desc, run.step,
             total, s["grad_accum"], s["batch_size"], acc.mixed_precision, acc.num_processes)
    bar = tqdm(total=total, initial=run.step, desc=desc, disable=not (s["progress"] and acc.is_main_process))
    run.module.train()
    while run.step < total:
        for group in run.opt.param_groups:
            group["lr"] = lr_at(run.step, total, s["lr"], s["warmup_steps"])
        losses, n_tok, step_start = [], 0, time.perf_counter()
        for batch in _micro_batches(plan, run.step, acc, s["grad_accum"]):
            with acc.accumulate(run.module):
                loss, tokens = forward(batch)
                acc.backward(loss)
                if acc.sync_gradients and s["max_grad_norm"]:
                    acc.clip_grad_norm_(run.module.parameters(), s["max_grad_norm"])
                run.opt.step()
                run.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach().float().item())
            n_tok += tokens
        run.step += 1
        step_tokens = int(run.reduce_sum(n_tok))
        run.tokens += step_tokens
        loss = run.reduce_sum(sum(losses) / len(losses)) / acc.num_processes
        step_lr = run.opt.param_groups[0]["lr"]
        tok_s = step_tokens / max(time.perf_counter() - step_start, 1e-9)
        run.curve.append([run.step, run.tokens, round(loss, 6), step_lr, round(tok_s, 1)])
        if s["log_with"] != "none":
            acc.log({"loss": loss, "lr": step_lr, "tokens_per_s": tok_s, "tokens": run.tokens}, step=run.step)
        if after_step:
            after_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{(run.tokens - start_tokens) / (time.perf_counter() - start):.0f}")
        if s["checkpoint_every"] and run.step % s["checkpoint_every"] == 0 and run.step < total:
            run.save()
    bar.close()
    if s["log_with"] != "none":
        acc.end_training()
    loop_s, loop_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    log.info("%s: %d tokens in %.1f s, final loss %.4f", desc, run.tokens - start_tokens, loop_s,
             run.curve[-1][2] if run.curve else float("nan"))
    tail = [c[2] for c in run.curve[-max(1, min(10, len(run.curve))):]]
    return {"steps": run.step, "train_tokens": run.tokens, "final_loss": sum(tail) / max(1, len(tail)),
            "session_tokens": run.tokens - start_tokens, "loop_s": loop_s, "loop_cpu_s": loop_cpu_s,
            "tokens_per_s": (run.tokens - start_tokens) / max(loop_s, 1e-9) if run.step > start_step else None}


def write_sets_sorted(folder: Path, model) -> None:
    """peft writes its config's set-valued fields (target_modules, ...) to adapter_config.json as lists
    in set order, which follows Python's per-process string hashing: the same training wrote the
    file with its modules in another order from one run to the next (a new DVC hash, so every stage
    after it ran again). Rewritten here with those lists sorted, formatted as peft formats the file."""
    config = getattr(model, "peft_config", {}).get("default")
    path = folder / "adapter_config.json"
    if config is None or not path.exists():
        return
    data = json.loads(path.read_text())
    for key, value in vars(config).items():
        if isinstance(value, set) and isinstance(data.get(key), list):
            data[key] = sorted(data[key], key=str)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _finish(run: _Run, out_dir: Path, info: dict) -> None:
    """Write out_dir/adapter (peft safetensors, or the full model) and out_dir/curve.tsv."""
    acc = run.acc
    acc.wait_for_everyone()
    state = acc.get_state_dict(run.module)
    if acc.is_main_process:
        model = acc.unwrap_model(run.module).model
        state = {k.removeprefix("model."): v for k, v in state.items()}
        out_dir.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(out_dir / "adapter") as tmp:
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            write_sets_sorted(tmp, model)
            io.write_json(tmp / TRAINING_INFO, info)
        io.write_text(out_dir / "curve.tsv", curve_tsv(run.curve, columns=4))
        if run.s["curve_file"]:
            write_curves(run.s["curve_file"], run.curve)
        if not run.s["keep_checkpoint"]:
            shutil.rmtree(run.ckpt, ignore_errors=True)
    acc.wait_for_everyone()
    acc.free_memory()


CURVES = ("loss", "lr", "tokens_per_s")  # one DVC plot folder each (dvc.yaml top-level `plots:`)


def curve_file(pack: str, name: str) -> str:
    """The `curve_file` setting of a run: `<pack>.<name>`, written as results/_curves/<quantity>/
    <pack>.<name>.tsv (step, quantity) for each of CURVES. Outside the model folder (DVC outputs
    may not overlap) and kept by git like the metrics, so `dvc plots diff` compares commits and
    experiments; one folder per quantity because DVC draws a folder's files with one `y`."""
    return f"{pack}.{name}"


def curve_paths(name: str) -> dict[str, Path]:
    from pipeline.paths import repo_root

    return {q: repo_root() / "results" / "_curves" / q / f"{name}.tsv" for q in CURVES}


def write_curves(name: str, curve: list[list]) -> None:
    """The curve's loss, lr and tokens/s by step into curve_paths(name) (headers only: nothing trained)."""
    full = [line.split("\t") for line in curve_tsv(curve).splitlines()]
    for q, path in curve_paths(name).items():
        col = CURVE_COLUMNS.index(q)
        io.write_text(path, "".join(f"{cells[0]}\t{cells[col]}\n" for cells in full))


CURVE_COLUMNS = ("step", "tokens", "loss", "lr", "tokens_per_s")


def curve_tsv(curve: list[list], columns: int = len(CURVE_COLUMNS)) -> str:
    """The per-optimizer-step curve as TSV (the first `columns` of CURVE_COLUMNS); a header only
    when nothing trained.

    tokens is cumulative; lr is the rate the step used; tokens_per_s is that step's real tokens over
    its wall time (not comparable across runs on a shared machine, but shows stalls), so the
    model folder's curve.tsv stops before it (same seed, same bytes) and only `curve_file` (the
    DVC plot in results/) carries it. Rows of an older checkpoint leave missing cells empty.
    """
    columns = CURVE_COLUMNS[:columns]
    lines = ["\t".join(columns)]
    for point in curve:
        cells = (list(point) + [""] * len(columns))[:len(columns)]
        lines.append("\t".join(str(c) for c in cells))
    return "\n".join(lines) + "\n"


def _total_steps(s: dict, n_plan: int, world: int) -> int:
    """Optimizer steps the plan supports (each takes grad_accum x processes micro-batches), capped by max_steps."""
    steps = n_plan // (s["grad_accum"] * world)
    if steps == 0:
        raise PolyalignError("(examples)", "batch_size", f"{n_plan} micro-batches cannot fill one step of "
                             f"{s['grad_accum']} x {world} processes", "lower batch_size or grad_accum")
    return min(s["max_steps"], steps) if s["max_steps"] else steps


def _one_epoch(lengths: list[int], s: dict, packed: bool, epoch: int) -> list:
    """One epoch of micro-batches, seeded by `seed` and the epoch: lists of unit indices, or
    (packed) lists of bins of unit indices."""
    rng = random.Random(s["seed"] * 1_000_003 + epoch)
    if packed:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        bins = fill_bins(order, lengths, s["max_len"])
        return [bins[i:i + s["batch_size"]] for i in range(0, len(bins), s["batch_size"])]
    if s["order"] == "given":  # taco_data's curriculum: keep the caller's order
        return [list(range(i, min(i + s["batch_size"], len(lengths)))) for i in range(0, len(lengths), s["batch_size"])]
    return bucket_batches(lengths, s["batch_size"], rng, s["bucket_window"])


def _epoch_plan(units: list, lengths: list[int], s: dict, packed: bool, epochs: int) -> list:
    """`epochs` epochs of micro-batches (kept for tests/test_taco.py's curriculum check)."""
    return [batch for epoch in range(epochs) for batch in _one_epoch(lengths, s, packed, epoch)]


def _plan(lengths: list[int], s: dict, packed: bool, world: int) -> list:
    """Micro-batches of the whole run: `epochs` epochs, or as many epochs as `max_steps` needs."""
    need = s["max_steps"] * s["grad_accum"] * world if s["max_steps"] else 0
    plan, epoch = [], 0
    while (epoch < s["epochs"]) if not need else (len(plan) < need):
        plan += _one_epoch(lengths, s, packed, epoch)
        epoch += 1
    return plan


class _VocabTrim:
    """output_vocab: data. The first `output_vocab_probe` steps train on the full vocabulary and
    sum its softmax at the label positions (no extra pass); then the loss moves to `mass_support`."""

    def __init__(self, run: _Run, units: list):
        self.run, self.s, self.units = run, run.s, units
        self.loss = run.acc.unwrap_model(run.module)
        self.loss.start_probe()
        self.covered = None
        run.extra_save.append(self.state)
        run.extra_load.append(self.restore)

    def after_step(self) -> None:
        if self.loss.support is not None or self.run.step < self.s["output_vocab_probe"]:
            return
        acc = self.run.acc
        probs = acc.reduce(self.loss.prob_sum, reduction="sum") if acc.num_processes > 1 else self.loss.prob_sum
        rows = self.run.reduce_sum(self.loss.prob_rows)
        support, self.covered = mass_support(probs / max(rows, 1), label_support(self.units),
                                             self.s["output_vocab_mass"], self.s["output_vocab_max"])
        self.loss.set_support(support)

    def state(self, folder: Path) -> dict:
        """Checkpoint: the chosen support, or this process's partial sums while still probing."""
        if self.loss.support is not None:
            return {"support": self.loss.support.tolist(), "covered": self.covered}
        from safetensors.torch import save_file

        save_file({"prob_sum": self.loss.prob_sum.cpu(), "prob_rows": torch.tensor([self.loss.prob_rows])},
                  str(folder / f"probe_{self.run.acc.process_index}.safetensors"))
        return {}

    def restore(self, folder: Path, state: dict) -> None:
        if state.get("support") is not None:
            self.loss.set_support(torch.tensor(state["support"], dtype=torch.long))
            self.covered = state["covered"]
            return
        from safetensors.torch import load_file

        saved = load_file(str(folder / f"probe_{self.run.acc.process_index}.safetensors"))
        self.loss.prob_sum.copy_(saved["prob_sum"].to(self.loss.prob_sum.device))
        self.loss.prob_rows = int(saved["prob_rows"][0])

    def metrics(self) -> dict:
        support = self.loss.support if self.loss.support is not None else self.loss.prob_sum  # never trimmed
        return {"output_vocab": len(support),
                "output_vocab_coverage": None if self.covered is None else round(self.covered, 5)}


# --------------------------------------------------------------------------- public API
def causal_units(tok, examples: list[dict], s: dict) -> tuple[list, dict]:
    """Encoded (ids, labels) units and counts of what was dropped or split.

    Packed mode (`packing`; auto: every prompt is "") never truncates: a text longer than
    `max_len` becomes several units, each after the first starting with the start token.
    """
    packed = s["packing"] is True or (s["packing"] == "auto" and all(not ex.get("prompt") for ex in examples))
    limit = 10**9 if packed else s["max_len"]
    encoded = [encode_example(tok, ex.get("prompt") or "", ex["response"], limit) for ex in examples]
    kept = [e for e in encoded if e is not None]
    units = [piece for e in kept for piece in pack_sequences([e], s["max_len"], start_ids(tok))] if packed else kept
    return units, {"examples": len(examples), "dropped_too_long": len(encoded) - len(kept), "packed": packed,
                   "units": len(units)}


def train_causal_lm(base: str, examples: list[dict], out_dir: Path, cfg: dict) -> dict:
    """Fine-tune `base` on {"prompt", "response"} examples; loss on response tokens only.

    prompt "" makes an example plain language modelling on `response` (LAFT/MAFT); such
    example sets are packed into rows of `max_len` tokens, each example attending only to
    itself. Writes out_dir/adapter (peft
    safetensors, or the full model with full_finetune) and out_dir/curve.tsv
    (step, tokens, loss). Returns train_tokens, final_loss (mean of the last 10 steps),
    tokens_per_s (real, non-pad tokens of the training loop), peak_rss_gb, wall_s and counts.
    """
    wall = time.perf_counter()
    s = settings(cfg)
    precision = resolve_precision(s["mixed_precision"])
    _seed(s["seed"])
    model, tok = _load_base(base, "causal", precision, s["full_finetune"])
    units, counts = causal_units(tok, examples, s)
    if not units:
        raise PolyalignError("(examples)", "response", "no example has a response token left",
                             "check the data or raise max_len")
    key = run_key(base, hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest(), s, "causal")
    if counts["packed"] and not packing_honoured(model):
        if s["packing"] is True:
            raise PolyalignError("params.yaml", "packing", f"{type(model).__name__} attends across packed examples",
                                 "set packing: auto (one unit a row) for this model family")
        counts["packed"] = False  # units stay split to max_len, one a row, length-bucketed
    model = _wrap_trainable(model, s, "CAUSAL_LM")
    run = _Run(CausalLMLoss(model, s["logits_chunk"]), s, precision, key, checkpoint_path(s, key))
    world = run.acc.num_processes
    plan = _plan([len(u[0]) for u in units], s, counts["packed"], world)
    total = _total_steps(s, len(plan), world)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    trim = _VocabTrim(run, units) if s["output_vocab"] == "data" else None
    if s["resume"]:
        run.try_resume()
    device = run.acc.device

    def forward(batch):
        if counts["packed"]:
            b = collate_packed([[units[i] for i in row] for row in batch], pad)
            loss, _ = run.module(b["input_ids"].to(device), b["labels"].to(device), b["position_ids"].to(device))
        else:
            b = collate([units[i] for i in batch], pad)
            loss, _ = run.module(b["input_ids"].to(device), b["labels"].to(device))
        return loss, b["n_tokens"]

    metrics = _fit(run, plan, total, forward, "train", after_step=trim.after_step if trim else None)
    _finish(run, Path(out_dir), {"head": "causal", "base": base, "full_finetune": s["full_finetune"], "key": key})
    vocab = trim.metrics() if trim else {"output_vocab": len(lm_parts(model)[1])}
    return {**metrics, **counts, **vocab, "peak_rss_gb": round(peak_rss_gb(), 3), "wall_s": time.perf_counter() - wall,
            "mixed_precision": precision, "processes": world,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None}


def _reward_text_ids(tok, text: str, max_len: int) -> list[int]:
    """Start token + text, cut from the left: the reply being judged sits at the end."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    head = start_ids(tok)
    return head + ids[-max(1, max_len - len(head)):]


def _pad_stack(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and attention mask (B, T)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return ids, mask


def train_reward_model(base: str, pairs: list[dict], out_dir: Path, cfg: dict) -> dict:
    """Bradley–Terry reward model: `base` with a 1-logit head, LoRA (+ trained head) on {"chosen","rejected"}.

    Writes out_dir/adapter and out_dir/curve.tsv like train_causal_lm; returns its metrics
    plus final_accuracy (share of pairs ranked right over the last 10 steps).
    """
    wall = time.perf_counter()
    s = settings(cfg)
    precision = resolve_precision(s["mixed_precision"])
    _seed(s["seed"])
    model, tok = _load_base(base, "reward", precision, s["full_finetune"])
    enc = [(_reward_text_ids(tok, p["chosen"], s["max_len"]), _reward_text_ids(tok, p["rejected"], s["max_len"]))
           for p in pairs]
    if not enc:
        raise PolyalignError("(pairs)", "chosen", "no preference pairs to train on", "check the data")
    key = run_key(base, hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest(), s, "reward")
    model = _wrap_trainable(model, s, "SEQ_CLS")
    run = _Run(RewardLoss(model), s, precision, key, checkpoint_path(s, key))
    world = run.acc.num_processes
    plan = _plan([max(len(c), len(r)) for c, r in enc], s, False, world)
    total = _total_steps(s, len(plan), world)
    if s["resume"]:
        run.try_resume()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device, accuracy = run.acc.device, []

    def forward(batch_idx):
        seqs = [enc[i][0] for i in batch_idx] + [enc[i][1] for i in batch_idx]
        ids, mask = _pad_stack(seqs, pad)
        loss, acc = run.module(ids.to(device), mask.to(device), len(batch_idx))
        accuracy.append(float(acc))
        return loss, int(mask.sum())

    metrics = _fit(run, plan, total, forward, "reward")
    _finish(run, Path(out_dir), {"head": "reward", "base": base, "full_finetune": s["full_finetune"], "key": key,
                                 "max_len": s["max_len"]})
    tail = accuracy[-10 * s["grad_accum"]:]
    return {**metrics, "pairs": len(pairs), "final_accuracy": sum(tail) / len(tail) if tail else None,
            "peak_rss_gb": round(peak_rss_gb(), 3), "wall_s": time.perf_counter() - wall,
            "mixed_precision": precision, "processes": world}


def load_trained(base: str, adapter_dir: Path, *, head: str | None = None, merge: bool = True, dtype=None):
    """(model, tokenizer) of a trained adapter (or full model) in eval mode.

    `head` defaults to what training recorded in adapter_dir/training.json. LoRA weights
    are merged into the base by default: inference then costs the same as the base model.
    """
    from peft import PeftModel

    from pipeline.models import load_model, load_tokenizer

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.exists():
        raise PolyalignError(adapter_dir, "(folder)", "trained model not found", "run its training stage first")
    info = io.read_json(adapter_dir / TRAINING_INFO) if (adapter_dir / TRAINING_INFO).exists() else {}
    head = head or info.get("head", "causal")
    if (adapter_dir / "adapter_config.json").exists():
        model, tok = load_model(base, head=head, dtype=dtype)
        model = PeftModel.from_pretrained(model, adapter_dir)
        if merge:
            model = model.merge_and_unload()
    else:
        model, _ = load_model(str(adapter_dir), head=head, dtype=dtype)
        tok = load_tokenizer(base)
    model.eval()
    model.polyalign_max_len = info.get("max_len")  # reward_scores truncates as training did
    return model, tok


@torch.inference_mode()
def reward_scores(model, tok, texts: list[str], batch_size: int = 16, max_len: int | None = None) -> list[float]:
    """Scalar reward of each text (same encoding and truncation as training), batched by length, in input order."""
    max_len = max_len or getattr(model, "polyalign_max_len", None) or DEFAULTS["max_len"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    enc = [_reward_text_ids(tok, t, max_len) for t in texts]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out = [0.0] * len(enc)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = _pad_stack([enc[j] for j in idx], pad)
        scores = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().tolist()
        for j, v in zip(idx, scores):
            out[j] = v
    return out


def is_main_process() -> bool:
    """True on the process that writes results (always, outside `accelerate launch`)."""
    from accelerate import PartialState

    return PartialState().is_main_process
