"""mt_errors@<lang>: low-resource translation error analysis on the NTREX test documents.

Every available system translates the test sentences English→language (`en-xx`) and
language→English (`xx-en`): each available translator of the pack's list (pipeline.translate,
cached), the base model prompted with the pack's `translate` template (`base`), and the
adapted models prompted the same way (`taco`, `laft`: the LoRA adapters at
models/<lang>/taco_sft/taco/adapter and models/<lang>/laft/adapter, when present), plus the
trivial baseline `copy-source` (the source sentence as output). The sentences are a seeded
sample stratified over the test documents (`max_sentences`; never a prefix, which would be one
article). Scores: sacrebleu BLEU, chrF++ and TER (signatures kept) with intervals from resampling
whole documents; every MT system is a comparison row against its strongest trivial baseline
(copy-source, or Apertium where the pack has it) and the adapted systems also against `base`,
each with a paired document-resampled interval and a verdict. COMET when
`mt_errors.comet_checkpoint` is set. Per sentence: the error taxonomy of pipeline.mt_eval
(shares with Wilson intervals; off-target and any-error of adapted systems paired against base).
Per adaptation corpus: Jensen–Shannon divergence to the test set, and per test document against
the adapted system's per-document gain over base (Khiu et al.; n = documents, >= 10).

Writes results/<lang>/mt_errors.json (flat numbers + signature) and .rows.json,
results/<lang>/mt_errors.details.json (rates, examples, signatures, which systems ran or why
not), results/<lang>/mt_errors.sentences.tsv (one line per sentence and system) and
results/<lang>/mt_errors/ (source, reference and every system's output as plain text, so any
score can be recomputed with the sacrebleu command line).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import io, stats
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.mt_eval import (
    COMET_NOT_COMPARABLE,
    ERROR_DOC,
    ERROR_TYPES,
    HIGHER_IS_BETTER,
    METRICS,
    MIN_CORR_POINTS,
    THRESHOLDS,
    comet_covers,
    comet_scores,
    correlation_ci,
    doc_delta,
    doc_divergence,
    doc_scores,
    domain_divergence,
    error_rates,
    primary_error,
    sentence_chrf,
    sentence_errors,
    strongest,
)
from pipeline.packs import LanguagePack, load_language
from pipeline.packs import Translator as TranslatorSpec
from pipeline.paths import data_dir, repo_root, results_dir
from pipeline.provenance import sha256_file, sha256_text, signature
from pipeline.report import comparison, lid_note, mde_for, row, write_stage
from pipeline.translate import BACKWARD, FORWARD, MIN_LID_LETTERS, LlmIcl, Translator, backend_for, default_lang_check, letters

STAGE = "mt_errors"
DIRS = {"en-xx": FORWARD, "xx-en": BACKWARD}
# system name -> (the stage that trains it, its adapter under models/<lang>/)
ADAPTERS = {"taco": ("taco_sft", "taco_sft/taco/adapter"), "laft": ("laft", "laft/adapter")}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what a saved LoRA adapter is
N_EXAMPLES = 3
HUMAN = "human"  # the reference translation run through the error detectors (their false-positive floor)
COPY = "copy-source"  # trivial baseline: the source sentence as the translation
RULE_BASED = "apertium"  # the rule-based system, a baseline where the pack has it
TRIVIAL = (COPY, RULE_BASED)
BASE = "base"
VS_BASE = "vs_base."  # metric prefix of the adapted systems' rows against base (chrF++.en-xx.laft is vs trivial)
# adaptation corpus -> the system trained on it (laft_corpus = NTREX train + monolingual; taco_data)
CORPUS_SYSTEM = {"train_tgt": "laft", "mono_train": "laft", "taco_instructions": "taco"}


# --------------------------------------------------------------------------- systems
class AdaptedIcl(LlmIcl):
    """The base model plus a trained LoRA adapter, prompted exactly like the base (`translate` template)."""

    def __init__(self, pack: LanguagePack, adapter: Path, base: str, shots: int):
        super().__init__(TranslatorSpec(kind="llm-icl", model=base, shots=shots), pack)
        self.adapter = Path(adapter)

    def system_id(self) -> str:
        """The base's id plus a digest of the adapter's weights and config (not its training.json,
        whose timings differ on every run of the same training)."""
        files = sorted(self.adapter / name for name in ADAPTER_FILES if (self.adapter / name).is_file())
        digest = sha256_text("".join(sha256_file(p) for p in files))[:12]
        return f"{super().system_id()}:adapter{digest}"

    def _load(self):
        if self._model is None:
            from pipeline.train import load_trained

            self._model = load_trained(self.model_name, self.adapter)
        return self._model


def system_name(spec: TranslatorSpec) -> str:
    """Short, stable name used in metric names: apertium, base, hub-mt, file, icl-<model>."""
    if spec.kind == "llm-icl":
        return "base" if spec.model in (None, "base") else "icl-" + Path(spec.model).name.replace(".", "_")
    return spec.kind


def _stage_base(stage: str) -> str:
    try:
        return section(stage).get("base") or section("model")["base"]
    except PolyalignError:
        return section("model")["base"]


def build_systems(pack: LanguagePack, cfg: dict) -> tuple[dict[str, object], dict[str, str], str]:
    """({name: backend} of available systems, {name: why not} for the others, the reference's name)."""
    backends, skipped, reference = {}, {}, None
    for spec in pack.translators:
        name = system_name(spec)
        backend = backend_for(spec, pack)
        ok, why = backend.available()
        if ok and name not in backends:
            backends[name] = backend
            reference = reference or name
        elif not ok:
            skipped[name] = why
    if "base" not in backends:
        base = LlmIcl(TranslatorSpec(kind="llm-icl", model="base", shots=cfg["shots"]), pack)
        ok, why = base.available()
        backends.update({"base": base} if ok else {})
        skipped.update({} if ok else {"base": why})
    for name, (stage, rel) in ADAPTERS.items():
        adapter = repo_root() / "models" / pack.id / rel
        if adapter.is_dir():
            backends[name] = AdaptedIcl(pack, adapter, _stage_base(stage), cfg["shots"])
        else:
            skipped[name] = f"no adapter at models/{pack.id}/{rel} (run `dvc repro {stage}@{pack.id}`)"
    if not backends:
        raise PolyalignError(f"languages/{pack.id}.yaml", "translators", "no translation system is available ("
                             + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")", "see `polyalign doctor`")
    return backends, skipped, reference or next(iter(backends))


def load_test_set(pack_id: str) -> list[dict]:
    """data/<lang>/test.jsonl in file order."""
    path = data_dir(pack_id) / "test.jsonl"
    if not path.exists():
        raise PolyalignError(path, "(file)", "test split missing", f"run `dvc repro data@{pack_id}`")
    return io.read_jsonl(path)


# --------------------------------------------------------------------------- scoring one direction
def lid_verdicts(outputs: list[str], lang: str, check) -> list[bool | None]:
    """LID verdict per output; None (not judged) for outputs with under MIN_LID_LETTERS letters, where
    identifiers guess (pipeline.translate), and for all outputs when no identifier is available."""
    idx = [i for i, o in enumerate(outputs) if letters(o) >= MIN_LID_LETTERS]
    try:
        got = check([outputs[i] for i in idx], lang) if idx else []
    except PolyalignError:
        return [None] * len(outputs)
    out: list[bool | None] = [None] * len(outputs)
    for i, ok in zip(idx, got):
        out[i] = bool(ok)
    return out


def flag_outputs(src: list[str], ref: list[str], outputs: list[str], *, src_script: str, tgt_script: str, lang: str,
                 check, thresholds: dict) -> dict:
    """Per-sentence error flags of one system's outputs, their rates, and how many LID could judge."""
    verdicts = lid_verdicts(outputs, lang, check)
    flags = [sentence_errors(s, h, r, on_target=v, src_script=src_script, tgt_script=tgt_script,
                             thresholds=thresholds) for s, h, r, v in zip(src, outputs, ref, verdicts)]
    return {"flags": flags, "rates": error_rates(flags), "lid_known": sum(v is not None for v in verdicts)}


def analyse(src: list[str], ref: list[str], hyps: dict[str, list[str]], *, docs: list, tgt_script: str,
            n_boot: int, seed: int, **flag_kw) -> dict:
    """Scores, per-sentence flags and rates of every system in one direction.

    The human reference also runs through the detectors as system HUMAN: its error shares
    (off-target above all: the identifier's own misses) are the floor under every system's.
    The copy-source baseline is scored, not flagged (it is an untranslated copy by definition).
    """
    scores = doc_scores(hyps, ref, docs, script=tgt_script, n_boot=n_boot, seed=seed)
    out = {}
    for name, outputs in hyps.items():
        out[name] = {"flags": None} if name == COPY else flag_outputs(src, ref, outputs, tgt_script=tgt_script,
                                                                      **flag_kw)
        out[name] |= {"scores": scores[name], "chrf": [sentence_chrf(h, r) for h, r in zip(outputs, ref)]}
    out[HUMAN] = flag_outputs(src, ref, ref, tgt_script=tgt_script, **flag_kw) | {"chrf": [100.0] * len(ref)}
    return out


def examples(rows: list[dict], src: list[str], ref: list[str], outputs: list[str], flags: list[dict]) -> dict:
    """Up to N_EXAMPLES sentences per error type (test-file order)."""
    out = {}
    for name in ERROR_TYPES:
        hits = [i for i, f in enumerate(flags) if f.get(name)][:N_EXAMPLES]
        out[name] = [{"doc": rows[i]["doc"], "line": rows[i]["line"], "source": src[i], "output": outputs[i],
                      "reference": ref[i]} for i in hits]
    return out


# --------------------------------------------------------------------------- rows
def score_rows(pack: str, d: str, result: dict, docs: list, cfg: dict) -> list[dict]:
    """Per metric: the trivial baselines as rows, every other system compared with its strongest
    trivial baseline and (adapted systems) with base, paired intervals over resampled documents."""
    scores = {name: res["scores"] for name, res in result.items() if name != HUMAN}
    trivial = [t for t in TRIVIAL if t in scores]
    n, n_docs, out = len(docs), len(set(docs)), []
    for metric in METRICS:
        for name in scores:
            if name == COPY:
                s = scores[name][metric]
                r = row(pack, "language", STAGE, f"{metric}.{d}.{name}", s["score"], ci=(s["ci_low"], s["ci_high"]),
                        n=n, higher_is_better=HIGHER_IS_BETTER[metric],
                        note="trivial baseline: the source sentence as output; " + s["signature"])
                out.append(r | {"n_docs": n_docs})
                continue
            against = [t for t in trivial if t != name]
            if against:
                out.append(compare_scores(pack, d, metric, scores, name, strongest(scores, against, metric), docs,
                                          cfg, prefix=""))
            if name not in (BASE, *TRIVIAL) and BASE in scores:
                out.append(compare_scores(pack, d, metric, scores, name, BASE, docs, cfg, prefix=VS_BASE))
    return out


def compare_scores(pack: str, d: str, metric: str, scores: dict, name: str, baseline: str, docs: list, cfg: dict,
                   *, prefix: str) -> dict:
    """One comparison row: corpus `metric` of `name` against `baseline`, documents resampled whole."""
    a, b = scores[name][metric], scores[baseline][metric]
    delta = doc_delta(a, b, docs, n_boot=cfg["n_boot"], seed=cfg.get("seed", 0))
    mde = mde_for(STAGE, metric)
    hib = HIGHER_IS_BETTER[metric]
    note = a["signature"]
    verdict = stats.verdict(delta[0], delta[1], delta[2], mde, hib)
    if baseline in TRIVIAL and verdict != "better":
        note = f"does not beat {baseline}, its strongest trivial baseline ({verdict}); " + note
    return comparison(pack, "language", STAGE, f"{prefix}{metric}.{d}.{name}", a["score"], b["score"],
                      delta_ci=delta, n=len(docs), n_docs=len(set(docs)), mde=mde, baseline_name=baseline,
                      higher_is_better=hib, ci=(a["ci_low"], a["ci_high"]), note=note)


def error_rows(pack: str, d: str, result: dict, docs: list, lid: str | None, cfg: dict) -> list[dict]:
    """Primary-error shares (each sentence counted once) with Wilson intervals; the adapted
    systems' off-target and any-error shares also paired against base (documents resampled)."""
    out, n_docs = [], len(set(docs))
    primary = {name: [primary_error(f) for f in res["flags"]] for name, res in result.items() if res["flags"]}
    for name, labels in primary.items():
        for kind in (*ERROR_TYPES, "any"):
            hits = _hits(labels, kind)
            note = lid if kind in ("off_target", "any") else None
            if name == HUMAN and kind == "any":
                note = "the human reference through the same detectors: the floor under every system's shares"
            value, lo, hi = stats.wilson_ci(sum(hits), len(hits))
            if kind == "off_target" and result[name]["lid_known"] == 0:
                value, lo, hi = None, None, None
                note = (f"not measured: no output has the {MIN_LID_LETTERS} letters language identification "
                        "needs, or no identifier is available")
            out.append(row(pack, "language", STAGE, f"err.{kind}.{d}.{name}", value, ci=(lo, hi), n=len(hits),
                           higher_is_better=False, note=note) | {"n_docs": n_docs})
            if kind in ("off_target", "any") and name not in (BASE, HUMAN, *TRIVIAL) and BASE in primary \
                    and value is not None:
                out.append(_error_vs_base(pack, d, name, kind, hits, _hits(primary[BASE], kind), docs, note, cfg))
    return out


def _hits(labels: list[str], kind: str) -> list[bool]:
    return [p != "ok" if kind == "any" else p == kind for p in labels]


def _error_vs_base(pack, d, name, kind, hits, base_hits, docs, note, cfg) -> dict:
    delta = stats.paired_delta(hits, base_hits, docs, n_boot=cfg["n_boot"], seed=cfg.get("seed", 0))
    value, lo, hi = stats.wilson_ci(sum(hits), len(hits))
    return comparison(pack, "language", STAGE, f"{VS_BASE}err.{kind}.{d}.{name}", value, sum(base_hits) / len(hits),
                      delta_ci=delta, n=len(hits), n_docs=len(set(docs)), mde=mde_for(STAGE, "rate"),
                      baseline_name=BASE, higher_is_better=False, ci=(lo, hi), note=note)


def comet_rows(pack: LanguagePack, d: str, src, ref, hyps: dict, docs: list, cfg: dict) -> tuple[list, dict]:
    """COMET per system (or one skipped row per system), and {system: system score} for the details.
    Systems other than base are paired against base (segment scores, documents resampled)."""
    checkpoint = cfg.get("comet_checkpoint")
    covered = comet_covers(pack.bcp47)
    coverage = ("" if covered else f"; {pack.name} ({pack.bcp47}) is outside the COMET encoder's (XLM-R) "
                f"languages{'' if covered is False else ' (coverage unknown)'}: scores are unreliable")
    if not checkpoint:
        return [row(pack.id, "language", STAGE, f"comet.{d}.{name}", None, n=len(src),
                    note="skipped: no COMET checkpoint configured (params.yaml mt_errors.comet_checkpoint)" + coverage)
                for name in hyps], {}
    path = Path(checkpoint) if Path(checkpoint).is_absolute() else repo_root() / checkpoint
    if not path.is_file():
        raise PolyalignError("params.yaml", "mt_errors.comet_checkpoint", f"'{checkpoint}' is not a file",
                             "point it at a COMET checkpoint (…/checkpoints/model.ckpt)")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    segs = {name: comet_scores(path, src, out, ref, batch_size=cfg["comet_batch_size"])[1]
            for name, out in hyps.items()}
    rows, summary, boot = [], {}, {"n_boot": cfg["n_boot"], "seed": cfg.get("seed", 0)}
    for name, seg in segs.items():
        value, lo, hi = stats.cluster_bootstrap_ci(seg, docs, **boot)
        if name == BASE or BASE not in segs:
            rows.append(row(pack.id, "language", STAGE, f"comet.{d}.{name}", value, ci=(lo, hi), n=len(seg),
                            note=COMET_NOT_COMPARABLE + coverage) | {"n_docs": len(set(docs))})
        else:
            rows.append(comparison(pack.id, "language", STAGE, f"comet.{d}.{name}", value, float(sum(segs[BASE]) / len(seg)),
                                   delta_ci=stats.paired_delta(seg, segs[BASE], docs, **boot), n=len(seg),
                                   n_docs=len(set(docs)), mde=mde_for(STAGE, "comet"), baseline_name=BASE,
                                   ci=(lo, hi), note=COMET_NOT_COMPARABLE + coverage))
        summary[name] = value
    return rows, summary


def domain_rows(pack_id: str, test: list[dict], sample: list[dict], en_xx: dict, cfg: dict) -> tuple[list[dict], dict]:
    """JSD of each configured adaptation corpus to the whole test split's target side (context), and
    per test document against the gain of the system trained on that corpus (Khiu et al.)."""
    rows, details = [], {}
    test_tgt = [r["tgt"] for r in test]
    for name, spec in cfg["domain_corpora"].items():
        lines = read_corpus(spec.format(pack=pack_id))
        if lines is None:
            rows.append(row(pack_id, "language", STAGE, f"jsd.{name}", None, higher_is_better=False,
                            note=f"corpus not present: {spec.format(pack=pack_id)}"))
            continue
        d = domain_divergence(lines, test_tgt, samples=cfg["jsd_samples"])
        note = None if d["complete"] else (f"corpus ({d['corpus_tokens']} tokens) smaller than the test set "
                                           f"({d['test_tokens']}): divergence biased upwards")
        rows.append(row(pack_id, "language", STAGE, f"jsd.{name}", d["jsd"], ci=(d["ci_low"], d["ci_high"]),
                        n=d["test_tokens"], higher_is_better=False, note=note))
        corr_row, d["per_doc"] = doc_similarity_row(pack_id, name, lines, test, sample, en_xx, cfg)
        rows.append(corr_row)
        details[name] = d
    return rows, details


def doc_similarity_row(pack_id: str, corpus: str, lines: list[str], test: list[dict], sample: list[dict],
                       en_xx: dict, cfg: dict) -> tuple[dict, dict]:
    """Pearson r over test documents of JSD(corpus, document) vs the document's en→xx chrF++ gain of
    the system trained on the corpus over base (context row; null under MIN_CORR_POINTS documents)."""
    system, metric = CORPUS_SYSTEM.get(corpus), f"domain_r.{corpus}"
    if system not in en_xx or BASE not in en_xx:
        return row(pack_id, "language", STAGE, metric, None, higher_is_better=False,
                   note=f"not measured: no system trained on this corpus ({system or 'none known'}) ran beside base"), {}
    docs = [r["doc"] for r in sample]
    gain = per_doc_gain(en_xx[system]["scores"]["chrf++"], en_xx[BASE]["scores"]["chrf++"], docs)
    doc_lines = {doc: [r["tgt"] for r in test if r["doc"] == doc] for doc in gain}
    jsd = doc_divergence(lines, doc_lines, samples=min(cfg["jsd_samples"], 5))
    points = {doc: {"jsd": jsd[doc], "gain": gain[doc]} for doc in gain}
    c = correlation_ci([p["jsd"] for p in points.values()], [p["gain"] for p in points.values()])
    what = f"per-document JSD({corpus}, document) vs {system}'s chrF++ gain over base en→xx"
    if c is None:
        return row(pack_id, "language", STAGE, metric, None, n=len(points), higher_is_better=False,
                   note=f"not shown: {len(points)} documents (< {MIN_CORR_POINTS}, or a constant side); {what}"), points
    note = f"context, not a gain: Pearson r of {what} over {c['n']} documents (Fisher-z interval; z={c['z']:.4f}, se={c['se']:.4f})"
    return row(pack_id, "language", STAGE, metric, c["r"], ci=(c["ci_low"], c["ci_high"]), n=c["n"],
               higher_is_better=False, note=note) | {"n_docs": c["n"]}, points


def per_doc_gain(a: dict, b: dict, docs: list) -> dict:
    """{doc: corpus metric of system a on the document's sentences - the same for b} (doc_scores entries)."""
    out = {}
    for doc in dict.fromkeys(docs):
        idx = [i for i, x in enumerate(docs) if x == doc]
        out[doc] = a["score_fn"](a["stats"][idx].sum(0)) - b["score_fn"](b["stats"][idx].sum(0))
    return out


def read_corpus(spec: str) -> list[str] | None:
    """`path` (one text a line) or `path#field1,field2` (JSON lines, those fields); None if absent."""
    path, _, fields = spec.partition("#")
    full = repo_root() / path
    if not full.exists():
        return None
    if not fields:
        return [line for line in full.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = fields.split(",")
    return [str(r[k]) for r in io.read_jsonl(full) for k in keys if r.get(k)]


# --------------------------------------------------------------------------- writing
def write_texts(pack_id: str, d: str, src: list[str], ref: list[str], hyps: dict[str, list[str]]) -> None:
    def text(lines):
        return "".join(" ".join(x.split()) + "\n" for x in lines)

    out = results_dir(pack_id) / STAGE
    files = {f"{d}.src.txt": src, f"{d}.ref.txt": ref, **{f"{d}.{name}.txt": h for name, h in hyps.items()}}
    for name, lines in files.items():
        io.write_text(out / name, text(lines))


def tsv_lines(d: str, rows: list[dict], src, ref, hyps: dict, result: dict) -> list[str]:
    def clean(x):
        return " ".join(str(x).split())

    out = []
    for name, outputs in hyps.items():
        res = result[name]
        for i, r in enumerate(rows):
            f = res["flags"][i]
            marks = ["" if f[t] is None else str(int(f[t])) for t in ERROR_TYPES]
            out.append("\t".join([d, name, clean(r["doc"]), str(r["line"]), f"{res['chrf'][i]:.2f}",
                                  primary_error(f), *marks, clean(src[i]), clean(outputs[i]), clean(ref[i])]))
    return out


TSV_HEADER = "\t".join(["direction", "system", "doc", "line", "chrf++", "primary", *ERROR_TYPES, "source", "output",
                        "reference"])


def public_scores(scores: dict | None) -> dict | None:
    """A system's scores without the per-sentence statistics (for the JSON details)."""
    keep = ("score", "ci_low", "ci_high", "signature")
    return None if scores is None else {m: {k: v[k] for k in keep} for m, v in scores.items()}


def flat(d: str, result: dict, comet: dict) -> dict:
    out = {}
    for name, res in result.items():
        for metric in METRICS if name != HUMAN else ():
            out[f"{d}.{name}.{metric}"] = res["scores"][metric]["score"]
        for kind, r in (res.get("rates") or {}).items():
            if r["rate"] is not None:
                out[f"{d}.{name}.rate.{kind}"] = r["rate"]
        if name in comet:
            out[f"{d}.{name}.comet"] = comet[name]
    return out


# --------------------------------------------------------------------------- the stage
def sides(rows: list[dict], d: str) -> tuple[list[str], list[str]]:
    """(sources, references) of direction `d`."""
    en, tgt = [r["en"] for r in rows], [r["tgt"] for r in rows]
    return (en, tgt) if d == "en-xx" else (tgt, en)


def translate_all(backends: dict, pack: LanguagePack, rows: list[dict], check) -> dict[str, dict[str, list[str]]]:
    """{direction: {system: outputs}} (cached by pipeline.translate). Each system translates both
    directions in turn, so its model is loaded once, and is freed once that system is done."""
    hyps: dict[str, dict[str, list[str]]] = {d: {} for d in DIRS}
    for name, backend in backends.items():
        for d, direction in DIRS.items():
            hyps[d][name] = Translator(pack, backend, lang_check=check).translate(sides(rows, d)[0], direction).outputs
        if hasattr(backend, "_model"):
            backend._model = None
    return hyps


def evaluate(pack: LanguagePack, cfg: dict, rows: list[dict], backends: dict, check, *,
             test: list[dict] | None = None) -> dict:
    """Everything mt_errors measures, for given systems (tests pass fake backends and LID).

    `rows` are the sentences translated (a stratified sample of `test`); the domain divergence
    uses the whole test split (`test`): JSD depends on sample size, so it must not shrink with
    `max_sentences`.
    """
    lid = lid_note(pack.id)
    thresholds = THRESHOLDS | (cfg.get("thresholds") or {})
    report = {"metrics": {}, "rows": [], "details": {}, "tsv": [TSV_HEADER], "texts": {}, "results": {}}
    docs = [r["doc"] for r in rows]
    for d, hyps in translate_all(backends, pack, rows, check).items():
        src, ref = sides(rows, d)
        hyps[COPY] = list(src)
        scripts = ("Latn", pack.script) if d == "en-xx" else (pack.script, "Latn")
        result = analyse(src, ref, hyps, docs=docs, src_script=scripts[0], tgt_script=scripts[1],
                         lang="tgt" if d == "en-xx" else "en", check=check, thresholds=thresholds,
                         n_boot=cfg["n_boot"], seed=cfg.get("seed", 0))
        c_rows, comet = comet_rows(pack, d, src, ref, hyps, docs, cfg)
        report["rows"] += score_rows(pack.id, d, result, docs, cfg) + c_rows
        # the pack's identifier judges en-xx outputs; English (xx-en) is identified well by every identifier
        report["rows"] += error_rows(pack.id, d, result, docs, lid if d == "en-xx" else None, cfg)
        report["metrics"] |= flat(d, result, comet)
        outputs = {**hyps, HUMAN: ref}
        report["details"][d] = {name: {"scores": public_scores(res.get("scores")), "rates": res.get("rates"),
                                       "comet": comet.get(name),
                                       "examples": res["flags"] and examples(rows, src, ref, outputs[name], res["flags"])}
                                for name, res in result.items()}
        report["tsv"] += tsv_lines(d, rows, src, ref, {k: v for k, v in outputs.items() if k != COPY}, result)
        report["texts"][d] = (src, ref, hyps)
        report["results"][d] = result
    d_rows, domain = domain_rows(pack.id, test or rows, rows, report["results"]["en-xx"], cfg)
    report["rows"] += d_rows
    report["metrics"] |= {f"jsd.{k}": v["jsd"] for k, v in domain.items()}
    report["details"]["domain"] = domain
    return report


def sample_sentences(test: list[dict], cfg: dict) -> list[dict]:
    """`max_sentences` test rows spread over the test documents (seeded round robin), never a prefix."""
    return stats.stratified_sample(test, lambda r: r["doc"], cfg.get("max_sentences"), seed=cfg.get("seed", 0))


def run(pack_id: str) -> None:
    pack, cfg = load_language(pack_id), section(STAGE)
    test = load_test_set(pack_id)
    rows = sample_sentences(test, cfg)
    backends, skipped, reference = build_systems(pack, cfg)
    report = evaluate(pack, cfg, rows, backends, default_lang_check(pack), test=test)
    systems = {name: b.system_id() for name, b in backends.items()}
    n_docs = len({r["doc"] for r in rows})
    details = {"reference": reference, "systems": systems, "skipped": skipped,
               "thresholds": THRESHOLDS | (cfg.get("thresholds") or {}), "error_types": ERROR_DOC,
               "comet_checkpoint": cfg.get("comet_checkpoint"), "comet_covers_language": comet_covers(pack.bcp47),
               "n_sentences": len(rows), "n_docs": n_docs, "test_docs": len({r["doc"] for r in test}),
               **report["details"]}
    for d, (src, ref, hyps) in report["texts"].items():
        write_texts(pack_id, d, src, ref, hyps)
    sig = signature(stage=STAGE, pack=pack_id, cfg=cfg, systems=systems,
                    test=sha256_file(data_dir(pack_id) / "test.jsonl")[:12],
                    sacrebleu_chrf=report["details"]["en-xx"][COPY]["scores"]["chrf++"]["signature"],
                    sacrebleu_bleu=report["details"]["en-xx"][COPY]["scores"]["bleu"]["signature"],
                    sacrebleu_ter=report["details"]["en-xx"][COPY]["scores"]["ter"]["signature"])
    io.write_json(results_dir(pack_id) / f"{STAGE}.details.json", {"signature": sig, **details})
    io.write_text(results_dir(pack_id) / f"{STAGE}.sentences.tsv", "\n".join(report["tsv"]) + "\n")
    metrics = {"n_sentences": len(rows), "n_docs": n_docs, "systems": len(backends), **report["metrics"]}
    write_stage(pack_id, STAGE, metrics, report["rows"], sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
