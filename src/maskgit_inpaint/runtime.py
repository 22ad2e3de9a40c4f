"""Device, precision and threads: one place decides them for every stage.

Precision follows what the hardware really does. bf16 autocast pays only where
bf16 arithmetic runs natively: on a CPU without it PyTorch emulates it, and a
training step of the embedded tokenizer ran 20x slower than in fp32 (measured on
an AVX2-only AMD EPYC and with AVX2 emulated on a Zen 4; docs/precision.md). So `auto`
picks:

| device | native bf16 | auto |
|---|---|---|
| CUDA | yes (compute capability >= 8.0) | bf16 |
| CUDA | no (V100, T4, ...) | fp16 autocast; training scales its loss (`grad_scaler`) |
| CPU | yes (AVX512-BF16 or AMX in the kernels ATen dispatches to; ARM BF16) | bf16 |
| CPU | no | fp32 |

A forced bf16 or fp16 where the device lacks it warns once (SlowPrecisionWarning).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what params may ask for
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: autocast off
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which its convolutions and matmuls still use bf16 instructions.
ONEDNN_BF16_ISAS = ("AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


class SlowPrecisionWarning(UserWarning):
    """A precision was forced that this device can only emulate."""


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cores() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def threads() -> int:
    """Torch threads for this process: OMP_NUM_THREADS where it is set, else every core (torch takes only the physical ones on some boxes).

    A process that shares the machine is started with it: a Dask nanny sets it in every
    worker it spawns (1, or the value in its own environment; grid_runner gives a local
    cluster's workers their share of the cores). torchrun sets 1 as well; training/distributed.py
    divides the cores among its processes itself.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else cores()


def setup(seed: int) -> torch.device:
    """Seed torch and give it this process's threads (`threads`)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads())
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device()


@dataclass(frozen=True)
class Hardware:
    """The facts the precision decision reads: `detect` measures them, tests inject them."""

    kind: str  # "cpu" or "cuda"
    name: str  # CPU model name or GPU name
    capability: str  # CPU: the vector ISA ATen dispatches to (AVX512, AVX2, DEFAULT, SVE256, ...); CUDA: "sm_90"
    native_bf16: bool  # bf16 arithmetic in hardware, in the kernels that will run


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _arm_bf16() -> bool:
    """ARMv8.6 BF16 (Linux: the `bf16` cpu feature; macOS: FEAT_BF16, Apple M2 and later)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return any(line.startswith("Features") and "bf16" in line.split(":", 1)[1].split()
                   for line in cpuinfo.read_text(errors="replace").splitlines())
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


def _x86_bf16(capability: str) -> bool:
    """AVX512-BF16 or AMX in the CPU, and neither ATen (ATEN_CPU_CAPABILITY) nor oneDNN (ONEDNN_MAX_CPU_ISA) capped below them."""
    in_cpu = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn_cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return in_cpu and capability.startswith("AVX512") and onednn_cap in ONEDNN_BF16_ISAS


@functools.cache
def detect(kind: str) -> Hardware:
    """What this machine's `kind` device ("cpu" or "cuda") can do."""
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return Hardware("cuda", torch.cuda.get_device_name(), f"sm_{major}{minor}",
                        torch.cuda.is_bf16_supported(including_emulation=False))
    capability = torch.backends.cpu.get_cpu_capability()
    arm = platform.machine().lower() in ("arm64", "aarch64")
    return Hardware("cpu", _cpu_name(), capability, _arm_bf16() if arm else _x86_bf16(capability))


_warned: set[tuple[str, Hardware]] = set()  # a forced slow precision is said once per process


def choose(requested: str, hardware: Hardware) -> str:
    """The precision that runs ("fp32", "bf16" or "fp16") for params' `requested` on `hardware`."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose from {list(PRECISIONS)}")
    if requested == "auto":
        if hardware.native_bf16:
            return "bf16"
        return "fp16" if hardware.kind == "cuda" else "fp32"
    emulated = (requested == "bf16" and not hardware.native_bf16) or (requested == "fp16" and hardware.kind == "cpu")
    if emulated and (requested, hardware) not in _warned:
        _warned.add((requested, hardware))
        warnings.warn(f"precision {requested} forced on {hardware.kind} {hardware.name} ({hardware.capability}), which has no "
                      f"native {requested}: autocast is emulated there and runs many times slower than fp32 "
                      "(measured 15-20x on an AVX2-only CPU); set precision: auto", SlowPrecisionWarning, stacklevel=3)
    return requested


@dataclass(frozen=True)
class Precision:
    """The decided precision of one device: autocast, loss scaling and how figures name it."""

    name: str  # what runs: fp32, bf16 or fp16
    requested: str  # what params asked for (auto, fp32, bf16, fp16)
    device: torch.device
    hardware: Hardware

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (a no-op in fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.name])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for training: on in fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def facts(self) -> dict[str, str | bool]:
        """Where a figure came from: for metrics json, MLflow params and summary lines."""
        return {"precision": self.name, "precision_requested": self.requested, "device": self.device.type,
                "device_name": self.hardware.name, "capability": self.hardware.capability,
                "native_bf16": self.hardware.native_bf16}

    def describe(self) -> str:
        bf16 = "native bf16" if self.hardware.native_bf16 else "no native bf16"
        return f"{self.name} on {self.device.type} ({self.hardware.name}, {self.hardware.capability}, {bf16})"


def precision(requested: str, dev: torch.device, hardware: Hardware | None = None) -> Precision:
    """Decide the precision for `dev` from params' `requested` (auto, fp32, bf16, fp16); `hardware` defaults to detect."""
    hardware = hardware or detect(dev.type)
    return Precision(choose(requested, hardware), requested, dev, hardware)


# A CPU forward pass over a big batch streams every activation through main memory. In chunks
# whose largest activation stays in cache the embedded models ran 20-25% faster (AVX2, 2 cores,
# 32 images: VQGAN decode 0.207 s -> 0.160 s in chunks of 8, transformer 0.155 -> 0.125-0.134 s).
# GPUs want the whole batch.
CPU_CHUNK_BYTES = 4 << 20


def chunk_size(dev: torch.device, activation_bytes: int) -> int | None:
    """Items per forward pass for a model whose largest activation takes `activation_bytes` per item; None: all at once."""
    return max(1, CPU_CHUNK_BYTES // activation_bytes) if dev.type == "cpu" else None


def chunked(fn, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """fn over x in chunks along dim 0, concatenated: fn(x) for any fn that treats items independently."""
    if chunk is None or len(x) <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def in_cache_chunks(fn, dev: torch.device, activation_bytes: int):
    """fn, called in chunks sized for `dev` (chunk_size): the same results, faster on a CPU."""
    chunk = chunk_size(dev, activation_bytes)
    return lambda x: chunked(fn, x, chunk)


def clock(dev: torch.device) -> float:
    """Seconds for timing device work: waits for queued CUDA kernels first, so intervals are real."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


# Dense tensor-core peak FLOP/s of common GPUs (vendor datasheets), the denominator of MFU: bf16 with fp32
# accumulation (what autocast runs), or fp16 where the GPU has no bf16 (V100, T4: auto runs fp16 there).
# Without structured sparsity: datasheets often lead with the 2:4-sparse figure, twice these. The RTX 4090's
# 165 is its dense bf16 tensor figure with fp32 accumulation (82.6 is its non-tensor fp32 rate).
PEAK_DENSE_FLOPS = {
    "H200": 989e12, "H200 NVL": 835e12, "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,  # H100/H200: SXM
    "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12,
    "A10G": 70e12,  # AWS's variant of the A10: no public datasheet, an estimate
    "RTX 4090": 165e12, "V100": 125e12, "T4": 65e12,
}


def _words(name: str) -> str:
    """`name` as lower-case words between spaces, so that whole words can be looked up in it."""
    return f" {' '.join(re.findall(r'[0-9a-z]+', name.lower()))} "


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 (fp16 without bf16) peak FLOP/s of the GPU that torch.cuda.get_device_name() calls `device_name`.

    A key matches as whole words ("NVIDIA A100-SXM4-80GB" is an A100; "NVIDIA RTX A1000" is not, nor is an
    L40S an L4), and the longest key wins ("NVIDIA H100 PCIe" is not an SXM H100). None: not in the table.
    """
    name = _words(device_name)
    matches = [key for key in PEAK_DENSE_FLOPS if _words(key) in name]
    return PEAK_DENSE_FLOPS[max(matches, key=len)] if matches else None


def mfu(flops_per_second: float, device_name: str) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s of one GPU over its dense peak; None where the peak is unknown."""
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_second / peak
