"""Precision is decided once, from the hardware, and every autocast in the code base goes through it."""
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from maskgit_inpaint import config, runtime
from conftest import ROOT, stage_env, write_tiny_params

ZEN4 = runtime.Hardware("cpu", "AMD EPYC 9004", "AVX512", native_bf16=True)
EPYC_AVX2 = runtime.Hardware("cpu", "AMD EPYC 7002", "AVX2", native_bf16=False)
H100 = runtime.Hardware("cuda", "NVIDIA H100", "sm_90", native_bf16=True)
T4 = runtime.Hardware("cuda", "Tesla T4", "sm_75", native_bf16=False)


@pytest.mark.parametrize(("hardware", "expected"), [(ZEN4, "bf16"), (EPYC_AVX2, "fp32"), (H100, "bf16"), (T4, "fp16")])
def test_auto_follows_the_hardware(hardware, expected):
    assert runtime.choose("auto", hardware) == expected


@pytest.mark.parametrize("hardware", [ZEN4, EPYC_AVX2, H100, T4])
def test_fp32_is_fp32_everywhere(hardware):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.choose("fp32", hardware) == "fp32"


def test_forcing_bf16_on_a_cpu_without_it_warns_once():
    hardware = runtime.Hardware("cpu", "a CPU only this test has", "AVX2", native_bf16=False)
    with pytest.warns(runtime.SlowPrecisionWarning, match="no native bf16.*slower than fp32"):
        assert runtime.choose("bf16", hardware) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        assert runtime.choose("bf16", hardware) == "bf16"
        assert runtime.choose("bf16", ZEN4) == "bf16"  # native: never a warning


def test_unknown_precision_is_refused_in_params(tmp_path):
    path = write_tiny_params(tmp_path / "params.yaml", vqgan={"precision": "bfloat16"})
    with pytest.raises(config.ParamsError, match="vqgan.precision"):
        config.load(path)


def test_autocast_and_loss_scaling_follow_the_decision():
    cpu = torch.device("cpu")
    x = torch.randn(4, 8)
    weight = torch.randn(8, 8)
    with runtime.precision("auto", cpu, ZEN4).autocast():
        assert (x @ weight).dtype == torch.bfloat16
    with runtime.precision("auto", cpu, EPYC_AVX2).autocast():
        assert (x @ weight).dtype == torch.float32
    assert not runtime.precision("auto", cpu, EPYC_AVX2).grad_scaler().is_enabled()
    facts = runtime.precision("auto", cpu, EPYC_AVX2).facts()
    assert facts == {"precision": "fp32", "precision_requested": "auto", "device": "cpu", "device_name": "AMD EPYC 7002",
                     "capability": "AVX2", "native_bf16": False}


def test_a_cpu_capped_at_avx2_decides_fp32():
    # PyTorch's and oneDNN's own switches emulate an AVX2-only CPU: detection must see through the real chip.
    code = ("import torch; from maskgit_inpaint import runtime; h = runtime.detect('cpu'); "
            "print(torch.backends.cpu.get_cpu_capability(), h.native_bf16, runtime.choose('auto', h))")
    env = stage_env({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "False", "fp32"]


def test_onednn_capped_below_bf16_means_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert runtime._x86_bf16("AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not runtime._x86_bf16("AVX512")


# torch's own autocast, or an autocast call with arguments (`enabled=True`, a dtype): both bypass runtime.Precision.
BYPASS = re.compile(r"(torch|amp|cuda|cpu)\.autocast\b|\bautocast\((?!\))")


def test_every_autocast_goes_through_the_one_decision():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("src", "stages", "flows", "bench") for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "src/maskgit_inpaint/runtime.py"
        for number, line in enumerate(path.read_text().splitlines(), 1) if BYPASS.search(line)
    ]
    assert offenders == [], "autocast outside runtime.Precision:\n" + "\n".join(offenders)
    assert BYPASS.search("with runtime.autocast(dev, True):") and BYPASS.search("torch.autocast('cpu')")
    assert not BYPASS.search("with prec.autocast():")


def test_chunked_calls_equal_one_call():
    x = torch.randn(10, 3)
    assert torch.equal(runtime.chunked(lambda t: t * 2, x, 3), x * 2)
    assert runtime.chunk_size(torch.device("cpu"), runtime.CPU_CHUNK_BYTES // 8) == 8
    assert runtime.chunk_size(torch.device("cpu"), 10 * runtime.CPU_CHUNK_BYTES) == 1
    assert runtime.chunk_size(torch.device("cuda"), 1) is None


def test_every_params_section_that_runs_a_model_names_its_precision():
    params = config.load(ROOT / "params.yaml")
    for section in (params.vqgan, params.tokens, params.transformer, params.eval):
        assert section.precision == "auto"
    assert "amp:" not in Path(ROOT / "params.yaml").read_text()


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA A10", 125), ("NVIDIA A10G", 70), ("NVIDIA L4", 121), ("NVIDIA L40S", 362),
    ("NVIDIA GeForce RTX 4090", 165), ("Tesla V100-SXM2-16GB", 125), ("Tesla T4", 65),
    ("NVIDIA RTX A1000", None), ("NVIDIA B200", None),  # an A1000 is no A100; a GPU not in the table has no peak
])
def test_peak_flops_match_the_device_name_by_whole_words(name, tflops):
    assert runtime.peak_flops(name) == (None if tflops is None else tflops * 1e12)


def test_mfu_is_achieved_over_peak_flops_and_none_for_an_unknown_gpu():
    assert runtime.mfu(494.5e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert runtime.mfu(32.5e12, "Tesla T4") == pytest.approx(0.5)  # fp16: the T4 has no bf16
    assert runtime.mfu(1e15, "NVIDIA B200") is None


@pytest.mark.parametrize(("omp", "expected"), [("1", 1), ("3", 3), (None, "cores"), ("", "cores"), ("0", "cores"), ("4,2", "cores")])
def test_torch_threads_follow_omp_num_threads_else_every_core(monkeypatch, omp, expected):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    try:
        runtime.setup(0)
        assert torch.get_num_threads() == (runtime.cores() if expected == "cores" else expected)
    finally:
        torch.set_num_threads(before)
