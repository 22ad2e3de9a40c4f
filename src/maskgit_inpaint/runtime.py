"""Device, precision and threads: one place decides them for every stage."""
from __future__ import annotations

import contextlib
import os
import time

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int) -> torch.device:
    """Seed torch and use every core (torch defaults to physical cores only on some boxes)."""
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device()


def autocast(dev: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and CPU (3-5x faster with AMX/AVX512-BF16, STACK.md)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)


def clock(dev: torch.device) -> float:
    """Seconds for timing device work: waits for queued CUDA kernels first, so intervals are real."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


# Dense bf16 peak FLOP/s of common training GPUs (vendor datasheets), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops(dev: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a known CUDA device; None elsewhere (MFU is then not reported)."""
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
