"""A tiny, random COMET regression model built locally, so tests run the real unbabel-comet code path.

docs/offline-assets.md: no COMET checkpoint is available offline, but COMET loads a checkpoint from a
local path and its encoder from a local folder. This builds a 2-layer XLM-R config with a
SentencePiece tokenizer trained on a few hundred NTREX-like lines, wraps it in
`comet.models.RegressionMetric(load_pretrained_weights=False)` and saves
`<root>/checkpoints/model.ckpt` plus `<root>/hparams.yaml` as COMET's own checkpoints are laid
out. Its scores are meaningless (random weights): it checks wiring, not quality.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def build_tiny_comet(root: Path, lines: list[str], *, vocab_size: int = 400, seed: int = 0) -> Path:
    """Write a tiny COMET model under `root`; returns the checkpoint path for `load_from_checkpoint`."""
    import pytorch_lightning as ptl
    import sentencepiece as spm
    import torch
    from comet.models import RegressionMetric
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer, XLMRobertaTokenizerFast

    torch.manual_seed(seed)
    encoder = root / "encoder"
    encoder.mkdir(parents=True, exist_ok=True)
    corpus = root / "spm.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "spm"), vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, num_threads=1,
                                   bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    slow = XLMRobertaTokenizer(vocab_file=str(root / "spm.model"))
    slow.save_pretrained(encoder)
    XLMRobertaTokenizerFast.from_pretrained(encoder).save_pretrained(encoder)
    XLMRobertaConfig(vocab_size=len(slow), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130).save_pretrained(encoder)
    model = RegressionMetric(pretrained_model=str(encoder), load_pretrained_weights=False, train_data=[],
                             validation_data=[], hidden_sizes=[32], layer="mix", batch_size=4)
    ckpt = root / "checkpoints" / "model.ckpt"
    trainer = ptl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          accelerator="cpu", devices=1)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    hparams = dict(model.hparams) | {"load_pretrained_weights": False}
    (root / "hparams.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")
    return ckpt
