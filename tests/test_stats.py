"""pipeline/stats.py: intervals, verdicts and document-stratified sampling."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu

from pipeline import stats


def test_wilson_has_width_at_the_boundaries():
    p, lo, hi = stats.wilson_ci(0, 12)
    assert p == 0 and lo == 0 and 0.2 < hi < 0.3          # 0/12: upper bound ~0.24, not 0
    p, lo, hi = stats.wilson_ci(12, 12)
    assert p == 1 and hi == 1 and 0.7 < lo < 0.8


def test_verdicts():
    assert stats.verdict(0.5, 0.1, 0.9, mde=0.2) == "better"
    assert stats.verdict(0.5, 0.1, 0.9, mde=0.2, higher_is_better=False) == "worse"
    assert stats.verdict(-0.05, -0.1, 0.0 + 0.02, mde=0.2) == "no difference shown"
    assert stats.verdict(0.1, -0.5, 0.7, mde=0.2) == "underpowered"
    assert stats.verdict(None, None, None, mde=0.2) is None


def test_n_needed_scales_with_the_square_of_the_half_width():
    assert stats.n_needed(12, -1.0, 1.0, mde=0.5) == 48


def test_stratified_sample_spans_documents_and_keeps_order():
    items = [(d, i) for d in range(10) for i in range(20)]
    picked = stats.stratified_sample(items, lambda x: x[0], 24, seed=0)
    assert len(picked) == 24 and len({d for d, _ in picked}) == 10
    assert picked == sorted(picked)
    assert picked != items[:24]
    assert stats.stratified_sample(items, lambda x: x[0], 24, seed=0) == picked   # seeded


def test_identical_systems_have_a_zero_delta():
    a = np.random.default_rng(0).normal(size=40)
    d, lo, hi = stats.paired_delta(a, a, clusters=np.repeat(np.arange(8), 5))
    assert d == lo == hi == 0


def test_corpus_stats_reproduce_sacrebleu_and_resample_by_document():
    hyps = ["the cat sat on the mat", "a dog barked loudly", "rain fell all day", "he left early"]
    refs = ["the cat sat on a mat", "the dog barked", "it rained all day", "he went home early"]
    metric = sacrebleu.CHRF(word_order=2)
    s, score = stats.sacrebleu_stats(metric, hyps, refs)
    assert score(s.sum(0)) == pytest.approx(metric.corpus_score(hyps, [refs]).score)
    est, lo, hi = stats.corpus_ci(score, s, clusters=[0, 0, 1, 1], n_boot=200)
    assert lo <= est <= hi


def test_cluster_interval_is_wider_than_iid_when_documents_are_correlated():
    rng = np.random.default_rng(1)
    docs = np.repeat(np.arange(6), 15)
    x = rng.normal(size=6)[docs] + 0.2 * rng.normal(size=docs.size)
    _, lo_c, hi_c = stats.cluster_bootstrap_ci(x, docs)
    _, lo_i, hi_i = stats.cluster_bootstrap_ci(x, None)
    assert hi_c - lo_c > 2 * (hi_i - lo_i)


def test_system_rows_pair_every_system_with_the_baseline():
    from pipeline.report import system_rows, validate_rows

    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(10), 4)
    base = rng.normal(2.0, 0.3, 40)
    scores = {"base": base, "laft": base - 0.3 + rng.normal(0, 0.05, 40), "maft": base + rng.normal(0, 0.05, 40)}
    nbytes = {s: np.full(40, 100.0) for s in scores}
    rows = system_rows("nya", "language", "laft_eval", "bpb", {k: v * 100 for k, v in scores.items()}, den=nbytes,
                       clusters=docs, higher_is_better=False, mde=0.02)
    assert validate_rows(rows, "x") == rows
    assert [r["metric"] for r in rows] == ["bpb.base", "bpb.laft", "bpb.maft"]
    assert "verdict" not in rows[0] and rows[0]["ci_low"] < rows[0]["value"] < rows[0]["ci_high"]
    assert rows[1]["verdict"] == "better" and rows[1]["delta"] == pytest.approx(-0.3, abs=0.05)
    assert rows[2]["verdict"] == "no difference shown" and rows[2]["n_docs"] == 10 and rows[2]["baseline_name"] == "base"


def test_resampled_sums_add_clusters_in_order_whatever_the_blas():
    """Bootstrap sums are the plain left-to-right sum over clusters (what any IEEE machine gives
    bit for bit), not a BLAS matmul whose summation order depends on the CPU's kernel; and the
    vectorised path still gives the interval of the generic one (same resamples)."""
    rng = np.random.default_rng(3)
    sums = rng.normal(size=(7, 2)) * 1e3 + rng.normal(size=(7, 2)) * 1e-9
    counts = stats._counts(7, 50, seed=1)
    got = stats._resampled_sums(counts, sums)
    for i in range(50):
        for c in range(2):
            want = 0.0
            for j in range(7):
                want += float(counts[i, j]) * float(sums[j, c])
            assert got[i, c] == want
    x, docs = rng.normal(size=40), np.repeat(np.arange(10), 4)
    fast = stats.cluster_bootstrap_ci(x, docs)
    slow = stats.cluster_bootstrap_ci(x, docs, stat=lambda v: float(np.mean(v)))
    assert fast == pytest.approx(slow, rel=1e-12, abs=1e-12)
