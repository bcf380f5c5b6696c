"""Precision `auto`: bf16 only on hardware with native bf16, in the identity, the manifest and the metric key."""

import logging

import pytest
import torch

from sparsequant import precision
from sparsequant.config import load_pipeline
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.stage import config_sha256
from sparsequant.stages.cast import CastConfig
from sparsequant.stages.evaluate import EvaluateConfig, metric_key


@pytest.fixture(params=[(), ("amx_bf16",)], ids=["avx2_only", "amx"])
def cpu_flags(request, monkeypatch):
    """Pretend to run on an AVX2-only EPYC (no bf16 flags) or on a Xeon with AMX."""
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: request.param)
    precision._warn_emulated_bf16.cache_clear()
    return request.param


def test_auto_is_bf16_exactly_when_the_cpu_has_bf16_instructions(cpu_flags):
    expected = torch.bfloat16 if cpu_flags else torch.float32
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.autocast_dtype("auto", "cpu") == (torch.bfloat16 if cpu_flags else None)
    assert precision.resolve_precision("float32", "cpu") == torch.float32
    key = metric_key(EvaluateConfig(text="builtin", seq_len=64, max_windows=2), "builtin", "cpu")
    assert key.endswith("/bf16") == bool(cpu_flags)


def test_avx512_bf16_without_amx_is_not_native(monkeypatch):
    # That CPU ran bf16 matmuls at 0.60x fp32 (benchmarks/history.md §9), so auto must stay fp32 there.
    monkeypatch.setattr(precision, "_cpuinfo_field", lambda key: "fpu avx512f avx512_bf16 avx512_fp16")
    assert precision.cpu_bf16_flags() == () and precision.resolved_name("auto", "cpu") == "float32"
    monkeypatch.setattr(precision, "_cpuinfo_field", lambda key: "fpu avx512_bf16 amx_bf16 amx_tile")
    assert precision.cpu_bf16_flags() == ("amx_bf16",) and precision.resolved_name("auto", "cpu") == "bfloat16"


def test_defaults_are_auto_and_resolve_in_the_record():
    cfg = CastConfig()
    assert cfg.autocast == "auto" and cfg.distill.teacher_dtype == "auto" and EvaluateConfig().dtype == "auto"
    resolved = precision.resolved_precisions(cfg, "cpu")
    assert set(resolved) == {"autocast", "distill.teacher_dtype"}
    assert set(resolved.values()) <= {"bfloat16", "float32"}


def test_identity_follows_what_auto_resolves_to(monkeypatch):
    cfg, explicit = EvaluateConfig(text="builtin"), EvaluateConfig(text="builtin", dtype="float32")
    shas = {}
    for flags in ((), ("amx_bf16",)):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda flags=flags: flags)
        shas[flags] = (config_sha256("evaluate", cfg, None, "cpu"), config_sha256("evaluate", explicit, None, "cpu"))
    assert shas[()][0] != shas[("amx_bf16",)][0]  # auto: fp32 on one CPU, bf16 on the other
    assert shas[()][1] == shas[("amx_bf16",)][1]  # explicit float32 is the same run everywhere
    assert shas[()][0] == shas[()][1]  # auto that resolves to fp32 is the same run as float32


def test_explicit_bf16_on_a_cpu_without_it_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    precision._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sparsequant"):
        for _ in range(3):
            assert precision.resolve_precision("bfloat16", "cpu", "cast.autocast") == torch.bfloat16
    warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "cast.autocast" in warnings[0].getMessage()
    assert "30x slower" in warnings[0].getMessage()


def test_manifest_records_the_precision_used(tmp_path, text_file, cpu_flags):
    (tmp_path / "p.yaml").write_text("version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n"
                                     "  - stage: evaluate\n    config: {text: text.txt, seq_len: 32, max_windows: 2}\n")
    registry = Registry.default()
    final = run_pipeline(load_pipeline(tmp_path / "p.yaml", registry), registry, progress=False).final
    used = "bfloat16" if cpu_flags else "float32"
    assert final.manifest.stage.precision == {"dtype": used}
    assert final.manifest.environment["native_bf16"] == str(bool(cpu_flags)).lower()
    assert final.manifest.environment["cpu"] == precision.cpu_model()
    (key,) = final.manifest.metrics["perplexity"]
    assert key == "text.txt@32x2" + ("/bf16" if cpu_flags else "")
