"""model: materialise the base model (and helper models) once and record what was built.

Writes `models/base.json`, the manifest every downstream stage depends on: the model's
name, cached folder, weight hashes, size, and *measured* tokenizer checks (segmentation
of common words, NTREX round trip, English bits per byte). The weights stay in the
cache (`POLYALIGN_CACHE`), not in DVC. A model whose checks fall outside the expectations
in params.yaml `model.expect` fails the stage: docs/offline-assets.md shows how a silently broken
tokenizer costs 3.5x in bits per byte while still round-tripping text.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.models import bits_per_byte, english_sentences, fingerprint, load_model, materialise, model_manifest
from pipeline.paths import repo_root
from pipeline.provenance import signature
from pipeline.seeding import seed_everything

OUT = Path("models") / "base.json"


def measure(name: str, n_sentences: int) -> dict:
    """Manifest plus timings and English bits/byte on the first `n_sentences` NTREX lines."""
    start = time.time()
    materialise(name)
    built = time.time() - start
    start = time.time()
    model, tok = load_model(name)
    loaded = time.time() - start
    manifest = model_manifest(name)
    english = english_sentences(n_sentences)
    manifest["tokenizer"]["english_bits_per_byte"] = bits_per_byte(model, tok, english)
    manifest["tokenizer"]["english_sentences"] = len(english)
    manifest["timing_s"] = {"materialise": round(built, 1), "load": round(loaded, 1)}
    return manifest


def check(manifest: dict, expect: dict) -> None:
    """Fail loudly when a model's tokenizer or quality is outside its expectations."""
    name, tok = manifest["name"], manifest["tokenizer"]
    field = f"model.expect.{name}"
    for word in expect.get("single_tokens", []):
        pieces = tok["segmentation"].get(word)
        if pieces is None or len(pieces) != 1:
            raise PolyalignError("params.yaml", field, f"'{word}' splits into {pieces}: the tokenizer is broken",
                                 "rebuild the model (delete its cache folder) or check the tokenizer conversion")
    limit = expect.get("english_bits_per_byte_max")
    if limit is not None and tok["english_bits_per_byte"] > limit:
        raise PolyalignError("params.yaml", field, f"English bits/byte {tok['english_bits_per_byte']:.2f} > {limit}",
                             "the tokenizer or weights are wrong; see docs/offline-assets.md on the tokenizer")
    if tok["round_trip"] < 1.0:
        raise PolyalignError("params.yaml", field, f"only {tok['round_trip']:.1%} of NTREX lines round-trip",
                             "the tokenizer loses text")


def run(out: Path | None = None) -> dict:
    cfg = section("model")
    seed_everything(cfg.get("seed", 0))
    expect = cfg.get("expect") or {}
    base = measure(cfg["base"], cfg.get("check_sentences", 100))
    check(base, expect.get(cfg["base"], {}))
    helpers = {}
    for name in cfg.get("helpers") or []:
        helpers[name] = measure(name, cfg.get("check_sentences", 100))
        check(helpers[name], expect.get(name, {}))
    weights = fingerprint(cfg["base"])
    result = {**base, "helpers": helpers, "fingerprint": weights,
              "signature": signature(stage="model", model=cfg["base"], spec=base["spec_hash"], weights=weights)}
    io.write_json(out or repo_root() / OUT, result)
    return result


def main(argv=None) -> int:
    from stages._cli import stage_main

    return stage_main(run, "materialise the base model and record its manifest", pack=False, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
