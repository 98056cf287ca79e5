"""The typed schema of params.yaml: one pydantic model per section, unknown keys refused.

Every field says what it does (Field description); `validate_params` checks the file as written
and with each profile applied, and turns the first problem into one line naming params.yaml,
the dotted field and a did-you-mean fix. Stages still read plain dicts (pipeline.config.section).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import PolyalignError, did_you_mean


def F(default: Any, description: str, **kw) -> Any:
    """A field with its one-line description (every field has one: tests/test_params_schema.py)."""
    return Field(default, description=description, **kw)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceRef(Strict):
    """A pinned file: format plus a pack-style source spec (pipeline/sources.py checks the spec)."""
    format: str = F(..., description="how the file is read (jsonl, jsonl.gz, text, ...)")
    spec: dict = F(..., description="where it comes from: kind github/hub/pypi/local, pin and sha256")


class TrainSettings(Strict):
    """pipeline.train settings (DEFAULTS there); None or absent = inherit params.yaml `train`, then DEFAULTS."""
    lora_r: int | None = F(None, "LoRA rank", gt=0)
    lora_alpha: float | None = F(None, "LoRA scale numerator (scale = alpha / r)")
    lora_dropout: float | None = F(None, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list[str] | None = F(None, "module names (suffixes) that get LoRA adapters")
    full_finetune: bool | None = F(None, "train every weight instead of a LoRA adapter")
    lr: float | None = F(None, "peak learning rate (linear decay after warmup)", gt=0)
    weight_decay: float | None = F(None, "AdamW weight decay", ge=0)
    warmup_steps: int | None = F(None, "linear warmup steps", ge=0)
    max_grad_norm: float | None = F(None, "gradient clipping norm; 0 disables", ge=0)
    max_steps: int | None = F(None, "optimizer steps; 0 = run `epochs` epochs", ge=0)
    epochs: int | None = F(None, "passes over the data when max_steps is 0", gt=0)
    batch_size: int | None = F(None, "examples (packed rows) per micro-batch per process", gt=0)
    grad_accum: int | None = F(None, "micro-batches per optimizer step", gt=0)
    max_len: int | None = F(None, "tokens per example (longer ones are cut or dropped)", gt=0)
    seed: int | None = F(None, "seed of shuffling, dropout and LoRA initialisation")
    resume: bool | None = F(None, "resume from the run's checkpoint when one exists")
    checkpoint_every: int | None = F(None, "optimizer steps between checkpoints; 0 disables", ge=0)
    checkpoint_dir: str | None = F(None, "checkpoint folder; null = <cache>/checkpoints/<run hash>")
    keep_checkpoint: bool | None = F(None, "keep the checkpoint after the adapter is written")
    mixed_precision: Literal["auto", "bf16", "no"] | None = F(None, "auto: bf16 where the hardware has bf16 units")
    logits_chunk: int | None = F(None, "tokens per output-layer chunk (bounds the logits buffer)", gt=0)
    output_vocab: Literal["full", "data"] | None = F(None, "softmax over the full vocabulary or the data's support")
    output_vocab_mass: float | None = F(None, "probability mass the data support keeps", gt=0, le=1)
    output_vocab_max: int | None = F(None, "most token ids in the data support", gt=0)
    output_vocab_probe: int | None = F(None, "full-vocabulary steps that probe the support", ge=0)
    packing: Literal["auto", True, False] | None = F(None, "pack examples into max_len rows (auto: when prompts are empty)")
    order: Literal["shuffle", "given"] | None = F(None, "shuffle batches, or keep the given (curriculum) order")
    bucket_window: int | None = F(None, "batches per sorted window when length-bucketing", gt=0)
    progress: bool | None = F(None, "show a progress bar")
    log_with: Literal["none", "dvclive", "tensorboard", "wandb", "mlflow"] | None = F(
        None, "experiment tracker fed through accelerate each optimizer step (<cache>/trackers/); none by default")


class Train(TrainSettings):
    """Shared by every training stage: pipeline.train DEFAULTS < this < the stage's own keys."""
    launch: str = F("python", "how DVC starts training stages: python or an `accelerate launch ...` line")


class ModelSection(Strict):
    base: str = F(..., description="base model: a pipeline/models.py registry name, hub id or local path")
    chat_template: dict[str, bool] = F({}, "per stage: wrap its prompts in the tokenizer's chat template (instruct models)")
    helpers: list[str] = F([], "extra models materialised by the model stage")
    seed: int = F(0, "seed of the model stage's checks")
    check_sentences: int = F(100, "English sentences of the bits-per-byte sanity check", gt=0)
    expect: dict[str, dict] = F({}, "per model: single_tokens and english_bits_per_byte_max expected by the check")
    registry: dict[str, dict] = F({}, "named model builds overriding pipeline/models.py's built-in ones")


class Stats(Strict):
    mde: dict[str, dict[str, float]] = F({}, "minimal effect of interest per stage and metric ('default' for the rest)")


class Lid(Strict):
    languages: Literal["all"] | list[str] = F("all", "NTREX codes the identifier knows; all = every NTREX-128 language")
    sentences_per_language: int = F(..., description="training sentences per language", gt=0)
    dim: int = F(64, "fastText vector size", gt=0)
    minn: int = F(1, "shortest character n-gram", gt=0)
    maxn: int = F(4, "longest character n-gram", gt=0)
    epoch: int = F(10, "fastText epochs", gt=0)
    lr: float = F(1.0, "fastText learning rate", gt=0)
    bucket: int = F(200000, "hash buckets of the n-gram table", gt=0)
    seed: int = F(0, "training seed")


class Data(Strict):
    test_docs: int = F(..., description="NTREX documents held out for test", gt=0)
    dev_docs: int = F(..., description="NTREX documents held out for dev", ge=0)
    split_salt: str = F(..., description="salt of the seeded document split (change it to redraw)")
    lid_sentences: int | None = F(None, "test sentences of the LID accuracy; null = all", gt=0)
    seed: int = F(0, "seed of the stratified LID test sample")


class CultureAugment(Strict):
    generator: str | None = F(None, "paraphrasing model; null = model.base")
    k: int = F(4, "paraphrases sampled per seed question", gt=0)
    temperature: float = F(0.9, "sampling temperature", gt=0)
    top_p: float = F(0.95, "nucleus sampling mass", gt=0, le=1)
    max_new_tokens: int = F(32, "tokens per paraphrase", gt=0)
    threshold: float = F(0.8, "cosine to the seed a paraphrase must reach")
    synonym_variants: int = F(2, "WordNet rewrites per kept question", ge=0)
    max_swaps: int = F(2, "content words replaced per rewrite", ge=0)
    max_per_seed: int = F(8, "augmented questions kept per seed", ge=0)
    max_seeds: int | None = F(None, "training seeds augmented; null = all")
    seed: int = F(0, "sampling seed")
    encoder: SourceRef = F(..., description="sentence encoder of the similarity filter")
    wordnet: SourceRef = F(..., description="WordNet database files")


class CultureSft(TrainSettings):
    base: str | None = F(None, "base model; null = model.base")
    target: Literal["distribution", "majority"] = F("distribution", "soft answer distribution or CultureLLM's majority answer")


class CultureEval(Strict):
    systems: list[Literal["base", "culture", "all"]] = F(["base", "culture", "all"], "models compared")
    max_items: int | None = F(None, "held-out items scored; null = all", gt=0)
    batch_size: int = F(16, "scoring batch", gt=0)


class Blend(Strict):
    prompt: str = F("inst-4", "BLEnD prompt id")
    max_questions: int | None = F(24, "seeded sample of BLEnD questions; 0 = skip BLEnD, null = all", ge=0)
    max_new_tokens: int = F(16, "answer tokens", gt=0)
    batch_size: int = F(20, "generation batch", gt=0)
    seed: int = F(0, "sampling seed")


class Culture(Strict):
    reference: str = F("us", "culture every model's answers are also compared with")
    augment: CultureAugment = F(..., description="culture_augment: paraphrase and synonym augmentation")
    sft: CultureSft = F(..., description="culture_sft: per-culture fine-tuning (plus pipeline.train settings)")
    sft_all: TrainSettings = F(TrainSettings(), "culture_sft_all: culture.sft with these keys replaced")
    eval: CultureEval = F(..., description="culture_eval: held-out survey items")
    blend: Blend = F(..., description="culture_eval: the BLEnD short-answer benchmark")


class RmSource(Strict):
    language: str = F(..., description="language of the preference pairs")
    parser: Literal["hh", "fields"] = F(..., description="hh dialogue pairs or flat {prompt, chosen, rejected} records")
    data: SourceRef = F(..., description="the pinned preference file")


class RmSplit(Strict):
    train: float = F(..., description="share of pairs for training", gt=0, lt=1)
    dev: float = F(..., description="share for dev", ge=0, lt=1)
    test: float = F(..., description="share for test", gt=0, lt=1)


class RmTrain(Strict):
    base: str | None = F(None, "base model; null = model.base")
    sources: dict[str, RmSource] = F(..., description="preference sets, one reward model each")
    split: RmSplit = F(..., description="train/dev/test shares by a seeded hash of the opening message")
    seed: int = F(0, "split and training seed")
    context_turns: int = F(1, "user turns kept before the final exchange", gt=0)
    max_chars: int = F(800, "longer pairs are dropped", gt=0)
    max_train_pairs: int | None = F(448, "training pairs used; null = all", gt=0)
    max_dev_pairs: int | None = F(200, "dev pairs that choose the learning rate; null = all")
    max_test_pairs: int | None = F(200, "held-out pairs scored; null = all")
    train_eval_pairs: int = F(100, "train pairs re-scored after training", ge=0)
    lrs: list[float] = F([], "learning-rate candidates chosen on dev; empty = train.lr")
    batch_size: int = F(16, "scoring batch", gt=0)
    train: TrainSettings = F(TrainSettings(), "pipeline.train settings of the reward models")


class Bon(Strict):
    policy: Literal["taco", "base"] = F("taco", "generator of the best-of-n candidates")
    prompts: int = F(8, "held-out prompts", gt=0)
    n: int = F(4, "candidates per prompt", gt=0)
    max_new_tokens: int | Literal["auto"] = F("auto", "tokens per candidate; auto = taco.eval's budget")
    temperature: float = F(0.8, "sampling temperature", gt=0)
    top_p: float = F(0.95, "nucleus mass", gt=0, le=1)
    gen_batch_size: int = F(32, "generation batch", gt=0)
    seed: int = F(0, "sampling seed")


class RmTransfer(Strict):
    seed: int = F(0, "seed")
    translator_gate: Literal["taco", "off"] = F("taco", "skip translating when taco_data rejected this translator")
    eval_pairs: int = F(32, "held-out pairs translated", gt=0)
    tt_pairs: int | None = F(None, "translate-train pairs; null = as many as the source reward model", gt=0)
    batch_size: int = F(16, "scoring batch", gt=0)
    train: TrainSettings = F(TrainSettings(), "overrides of rm_train.train for the translate-train reward model")
    bon: Bon = F(Bon(), "best-of-n reranking with the transferred reward model")


class TacoSft(TrainSettings):
    """pipeline.train settings of both TaCo adapters (taco and plain)."""


class TacoBudget(Strict):
    quantile: float = F(95, "percentile of the training targets' token lengths", gt=0, le=100)
    margin: float = F(0.1, "relative margin over that percentile", ge=0)
    max: int | None = F(None, "cap on the budget; null = the context left after the prompt", gt=0)
    fallback: int = F(574, "budget when a pack has no translated targets", gt=0)


class TacoEval(Strict):
    max_prompts: int | None = F(24, "held-out prompts answered; null = all", gt=0)
    max_new_tokens: int | Literal["auto"] = F("auto", "answer tokens; auto = the budget rule below")
    budget: TacoBudget = F(TacoBudget(), "the auto answer budget")
    batch_size: int = F(24, "generation batch", gt=0)
    seed: int = F(0, "sampling seed")


class Taco(Strict):
    base: str | None = F(None, "base model; null = model.base")
    split_salt: str = F(..., description="salt of the held-out split")
    heldout_fraction: float = F(0.1, "instructions held out", gt=0, lt=1)
    max_chars: int = F(2000, "longer instruction+answer pairs are dropped", gt=0)
    max_instructions: int | None = F(96, "instructions translated per language; null = all")
    round_trip_chrf: float = F(40, "round-trip chrF gate of the translator", ge=0)
    min_samples: int = F(24, "fewer passing samples: TaCo is not trained", ge=0)
    min_eval: int = F(6, "fewer held-out items: not evaluated", ge=0)
    chunk: int = F(16, "instructions translated per batch", gt=0)
    probe: int = F(12, "items translated before the early gate decision", ge=0)
    curriculum: Literal["length", "quality", "none"] = F("length", "training order")
    schedule: Literal["taco_only", "staged"] = F("taco_only", "every step on TaCo targets, or plain first then TaCo")
    staged_fraction: float = F(0.5, "share of sft.max_steps on plain examples when staged", ge=0, le=1)
    judge: str | None = F(None, "LLM judge model; null = judged rows skipped")
    sft: TacoSft = F(TacoSft(), "taco_sft: pipeline.train settings")
    eval: TacoEval = F(TacoEval(), "taco_eval settings")


class UdhrHeldout(Strict):
    articles: int = F(15, "UDHR articles held out of every corpus", ge=0)
    seed: int = F(0, "seed of the article draw")


class Laft(TrainSettings):
    base: str | None = F(None, "base model; null = model.base")
    min_tokens: int = F(6, "lines shorter than this (whitespace tokens) are dropped", ge=0)
    udhr_heldout: UdhrHeldout = F(UdhrHeldout(), "out-of-domain UDHR test articles")


class Maft(TrainSettings):
    base: str | None = F(None, "base model; null = model.base")
    high_resource: list[str] = F([], "NTREX codes mixed in beside the target languages")
    temperature: float = F(3.33, "sampling temperature over languages (alpha = 1/T)", gt=0)
    examples: int | None = F(None, "examples drawn; null = all corpora together", gt=0)


class LaftEval(Strict):
    base: str | None = F(None, "base model; null = model.base")
    sentences: int | None = F(50, "target-language test sentences; null = all", gt=0)
    forgetting_sentences: int = F(25, "test sentences per high-resource language", ge=0)
    seed: int = F(0, "sampling seed")
    batch_size: int = F(8, "scoring batch", gt=0)


class MtErrors(Strict):
    max_sentences: int | None = F(12, "test sentences translated; null = all", gt=0)
    shots: int = F(4, "in-context examples", ge=0)
    n_boot: int = F(1000, "paired bootstrap resamples", gt=0)
    jsd_samples: int = F(20, "samples of the domain-similarity estimate", gt=0)
    comet_checkpoint: str | None = F(None, "COMET checkpoint path; null = no COMET")
    comet_batch_size: int = F(8, "COMET batch", gt=0)
    seed: int = F(0, "seed of the stratified test sample")
    domain_corpora: dict[str, str] = F({}, "corpora compared with the test set: name -> path[#fields]")


SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSection, "stats": Stats, "lid": Lid, "data": Data, "culture": Culture, "rm_train": RmTrain,
    "rm_transfer": RmTransfer, "train": Train, "taco": Taco, "laft": Laft, "maft": Maft, "laft_eval": LaftEval,
    "mt_errors": MtErrors,
}
TOP = {"profile": "active profile: default or a key of `profiles`", "languages": "enabled language packs",
       "cultures": "enabled culture packs", "packs": "every enabled pack (languages + cultures)",
       "profiles": "named overlays deep-merged over the sections (profile: <name>)"}


def _first_error(exc: ValidationError, prefix: str, section: type[BaseModel], file: str) -> PolyalignError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    field = ".".join([prefix, *loc])
    if err["type"] == "extra_forbidden":
        model = section
        for part in loc[:-1]:  # walk to the model that owns the unknown key, for its field names
            sub = model.model_fields.get(part) if isinstance(model, type) else None
            ann = getattr(sub, "annotation", None)
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        choices = list(model.model_fields) if model else []
        return PolyalignError(file, field, "unknown key", did_you_mean(loc[-1], choices) or
                              (f"known keys: {', '.join(choices)}" if choices else "remove it"))
    return PolyalignError(file, field, err["msg"].lower(), "fix the value")


def check_section(name: str, values: dict, file: str = "params.yaml", where: str | None = None) -> None:
    """Validate one section (a profile applied or not); first problem -> PolyalignError."""
    try:
        SECTIONS[name].model_validate(values)
    except ValidationError as exc:
        raise _first_error(exc, where or name, SECTIONS[name], file) from None


def validate_params(params: dict, file: str = "params.yaml") -> None:
    """Every section as written, every profile's overlay keys, and every section with each profile applied."""
    from pipeline.config import deep_merge

    for key in params:
        if key not in SECTIONS and key not in TOP:
            raise PolyalignError(file, key, "unknown section", did_you_mean(key, [*SECTIONS, *TOP]) or "remove it")
    for name in SECTIONS:
        if name in params:
            check_section(name, params[name], file)
    profiles = params.get("profiles") or {}
    if params.get("profile", "default") not in ("default", *profiles):
        raise PolyalignError(file, "profile", f"unknown profile '{params['profile']}'",
                             did_you_mean(params["profile"], profiles) or f"choose one of default, {', '.join(profiles)}")
    for pname, overlay in profiles.items():
        for name, over in (overlay or {}).items():
            if name not in SECTIONS:
                raise PolyalignError(file, f"profiles.{pname}.{name}", "unknown section",
                                     did_you_mean(name, SECTIONS) or "remove it")
            check_section(name, deep_merge(params.get(name) or {}, over or {}), file, f"profiles.{pname}.{name}")
