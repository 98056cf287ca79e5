"""bench/run_all.py: a failed benchmark is named and makes the run fail."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run_all  # noqa: E402


def test_failures_name_each_failed_child_with_its_last_error_line():
    train = {"sft": {"trainer": {"tokens_per_s": 38.0},
                     "exact": {"error": "Traceback ...\n  File x\npipeline.errors.PolyalignError: offline\n"}}}
    gen = {"error": "Traceback\nRuntimeError: boom"}
    assert run_all.failures(train, gen) == {"train.sft.exact": "pipeline.errors.PolyalignError: offline",
                                            "generate": "RuntimeError: boom"}
    assert run_all.failures({"sft": {"trainer": {}}}, {"batch_8": {}}) == {}


def test_generate_summary_rates_utilisation_and_same_run_ratio():
    gen = {"per_example": {"tokens_per_s": 10.0},
           "batch_8": {"tokens_per_s": 40.0, "speedup": 4.0, "same_as_per_example": 1.0},
           "batch_16": {"tokens_per_s": 60.0, "speedup": 6.0, "same_as_per_example": 1.0},
           "batch_16_fp32_head": {"tokens_per_s": 30.0, "same_as_prescored": 1.0},
           "sampled_batch_16": {"tokens_per_s": 50.0, "speedup": 5.0},
           "batch_16_bf16_body": {"tokens_per_s": 90.0, "identical_rows": 0.9},
           "batch_16_floor": {"gemm_s": 2.0, "attention_s": 0.5, "profiled_wall_s": 5.0,
                              "at_most_x_if_only_gemms_and_attention": 1.8},
           "scoring": {"text_bits": {"tokens_per_s": 900.0},
                       "options_shared": {"tokens_per_s": 1200.0, "speedup": 2.5}}}
    out = run_all.generate_summary(gen, {"fp32": {"gflops": 100.0}}, n_params=250_000_000)
    assert out["greedy_best"] == "batch_16" and out["greedy_tokens_per_s"] == 60.0
    assert out["greedy_gflops"] == 2 * 250e6 * 60 / 1e9 and out["greedy_utilisation_vs_fp32_peak"] == 0.3
    assert out["prescored_vs_fp32_head_same_run"] == 2.0 and out["sampled_speedup"] == 5.0
    assert out["scoring_shared_context_speedup"] == 2.5
    assert out["bf16_body_vs_exact_same_run"] == 1.5 and out["bf16_body_identical_rows"] == 0.9
    assert out["greedy_gemm_attention_share"] == 0.5 and out["greedy_at_most_x_same_arithmetic"] == 1.8
    assert out["default_graph_decode_score_share"] is None or 0 < out["default_graph_decode_score_share"] < 1


def test_stage_seconds_reads_a_repro_log():
    import stage_seconds

    log = """2026-12-02 17:46:56 polyalign: model_fingerprint: start
2026-12-02 17:46:56 polyalign: model_fingerprint: done in 0.2 s
Running stage 'mt_errors@glg':
2026-12-02 17:47:00 polyalign: mt_errors@glg: start
2026-12-02 17:48:40 polyalign: mt_errors@glg: done in 100.0 s
2026-12-02 17:48:41 polyalign: laft@glg: start
2026-12-02 17:49:31 polyalign: laft@glg: done in 49.8 s
"""
    out = stage_seconds.stage_seconds(log)
    assert out["stages"] == {"model_fingerprint": 0.2, "mt_errors@glg": 100.0, "laft@glg": 49.8}
    assert out["by_kind"] == {"mt_errors": 100.0, "laft": 49.8, "model_fingerprint": 0.2}
    assert out["wall_s"] == 155.0 and out["decode_score_share"] == round(100 / 150, 3)


def test_agreement_counts_identical_rows_and_tokens_before_the_first_difference():
    import bench_generate

    ref = [[1, 2, 3, 4], [5, 6], [7, 8]]
    out = bench_generate.agreement([[1, 2, 9, 9], [5, 6], [7]], ref)
    assert out == {"identical_rows": 1 / 3, "tokens_before_first_difference": (2 + 2 + 1) / 8}


def test_bf16_body_swaps_the_linear_layers_and_puts_them_back():
    import bench_generate
    import torch

    from pipeline import generate as G
    from pipeline.models import load_model

    model, tok = load_model("tiny-random")
    layer = next(m for m in model.modules() if type(m) is torch.nn.Linear and m is not model.lm_head)
    x = torch.randn(3, layer.in_features)
    exact, fp16 = layer(x), G._fp16_pack
    with bench_generate._Bf16Body(model):
        low = layer(x)
        assert G._fp16_pack is not fp16 and low.dtype == torch.float32
        assert torch.allclose(low, exact, rtol=0.05, atol=0.05) and not torch.equal(low, exact)
        assert torch.equal(low, torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16()).float())
    assert "forward" not in vars(layer) and G._fp16_pack is fp16 and torch.equal(layer(x), exact)


def test_bf16_body_reaches_every_decoding_step(monkeypatch):
    """The bf16 layers serve the prompt's forward pass and every later step (Gemma3Step, which runs its
    own GEMMs, is off while they are active): one call of every decoder linear layer a new token."""
    import bench_generate
    import torch

    from pipeline import generate as G
    from pipeline.models import load_model

    model, tok = load_model("tiny-random")
    calls, linear = [], bench_generate._Bf16Body.linear
    monkeypatch.setattr(bench_generate._Bf16Body, "linear", staticmethod(lambda *a: calls.append(1) or linear(*a)))
    layers = [m for m in G.lm_parts(model)[0].modules() if type(m) is torch.nn.Linear]
    with bench_generate._Bf16Body(model):
        assert not G.LEAN_STEP
        new = G.generate_ids(model, tok, ["Hello"], max_new_tokens=5, batch_size=1)[0][0]
    assert len(new) >= 3 and len(calls) == len(new) * len(layers) and G.LEAN_STEP  # the prompt's pass + a step a later token


def test_noop_repro_is_not_timed_where_the_graph_is_not_built(tmp_path):
    """A fresh clone has the committed results but not the outputs: timing `dvc repro` there would
    run the graph. The bench says so and runs nothing."""
    import subprocess

    import bench_dvc

    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n")
    out = bench_dvc.noop_repro_seconds(tmp_path)
    assert "does not say the graph is built" in out["skipped"] and not (tmp_path / "out.txt").exists()


def test_executed_utilisation_counts_the_trimmed_head_it_runs():
    """Model FLOPs count the full 262k-row output layer; the trimmed variant multiplies by 16k rows
    of it, so its executed utilisation is lower (it was reported above 1 on model FLOPs alone)."""
    base = {"tokens_per_s": 50.0, "tokens": 100, "loop_cpu_s": 4.0, "heldout_loss": 3.0, "peak_rss_gb": 7.0,
            "output_vocab": 262_144}
    run = lambda vocab: {**base, "tokens_per_s": 400.0, "loop_cpu_s": 0.5, "output_vocab": vocab}  # noqa: E731
    train = {"sft": {"trainer": base, "exact": run(262_144), "trimmed": run(16_384)}}
    out = run_all.derive(train, {"error": "skipped"}, {"bf16": {"gflops": 400.0}, "fp32": {"gflops": 150.0}},
                         n_params=268_000_000, width=640)
    exact, trimmed = out["sft.exact"], out["sft.trimmed"]
    assert exact["executed_gflops"] == exact["model_gflops"] == 4 * 268e6 * 400 / 1e9
    assert trimmed["executed_gflops"] == 4 * (268e6 - (262_144 - 16_384) * 640) * 400 / 1e9
    assert trimmed["executed_utilisation_vs_bf16_peak"] < trimmed["utilisation_vs_bf16_peak"]


def test_time_in_ops_counts_gemms_and_attention_apart():
    import torch
    from decode_at import time_in_ops

    a, q = torch.randn(300, 300), torch.randn(4, 8, 256, 64)  # each a few ms: well above the rounding

    def work():
        for _ in range(5):
            a @ a
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.randn(1000).exp()

    ops = time_in_ops(work)
    assert ops["gemm_s"] > 0 and ops["attention_s"] > 0 and set(ops["gemm_s_by_op"]) <= {"aten::mm"}
    assert ops["gemm_s"] + ops["attention_s"] < ops["profiled_wall_s"]


def test_ratio_summary_is_the_geometric_mean_with_a_t_interval_on_log_ratios():
    import math

    import pytest
    from decode_at import ratio_summary

    out = ratio_summary([2.0, 8.0])
    assert out["pairs"] == 2 and out["geomean"] == 4.0
    half = 12.7062 * math.log(4.0) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd(log 2, log 8) / sqrt(2)
    assert out["ci95"] == pytest.approx([4.0 * math.exp(-half), 4.0 * math.exp(half)], rel=1e-3, abs=0.01)
    assert ratio_summary([3.0]) == {"pairs": 1, "geomean": 3.0, "ci95": None}
    narrow = ratio_summary([2.9, 3.0, 3.1, 3.0])["ci95"]
    assert narrow[0] < 3.0 < narrow[1]


def test_isa_cap_runs_avx2_paths_and_says_so(monkeypatch):
    """decode_at --isa avx2: torch dispatches AVX2 kernels, polyalign sees no bf16 units (no bf16 first
    pass, no bf16 training), and hardware() says the paths are below the CPU's own."""
    import os
    import subprocess

    from decode_at import ISA_CAPS

    from pipeline.provenance import cpu_has_bf16

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu_has_bf16() is False
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    uncapped = cpu_has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # a cap at or above bf16 changes nothing
    assert cpu_has_bf16() is uncapped
    code = ("import torch; from pipeline.provenance import hardware, cpu_has_bf16; "
            "from pipeline.generate import prescore_kinds; "
            "print(torch.backends.cpu.get_cpu_capability(), cpu_has_bf16(), 'bf16' in prescore_kinds(torch.zeros(2, 2)), "
            "hardware())")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "POLYALIGN_PRESCORE")}
    out = subprocess.run([sys.executable, "-c", code], env=env | ISA_CAPS["avx2"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out[:3] == ["AVX2", "False", "False"]
    assert out[3].endswith(":avx2-capped" if " avx512f" in Path("/proc/cpuinfo").read_text() else ":avx2")
