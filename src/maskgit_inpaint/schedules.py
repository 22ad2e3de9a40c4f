"""Mask schedules gamma: progress r in [0, 1] -> fraction of tokens still masked.

gamma decreases from 1 to 0 (MaskGIT libml/mask_schedule.py). Training draws its
masking ratios from it (training/transformer.py) and decoding unmasks by it
(sampling.py); both import this table and nothing else of each other, so an edit
here reruns exactly those two stages. Schedule names are also listed as a Literal
in config.py (which must stay free of torch); tests/test_config.py keeps the two equal.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[torch.Tensor, int], torch.Tensor]


def _log(r: torch.Tensor, n: int) -> torch.Tensor:
    return -torch.log2(r) / math.log2(max(n, 2))


def _exp(r: torch.Tensor, n: int) -> torch.Tensor:
    return 1 - torch.exp2(-math.log2(max(n, 2)) * (1 - r))


SCHEDULES: dict[str, Schedule] = {
    "linear": lambda r, n: 1 - r,
    "cosine": lambda r, n: torch.cos(math.pi / 2 * r),
    "square": lambda r, n: 1 - r**2,
    "cubic": lambda r, n: 1 - r**3,
    "sqrt": lambda r, n: 1 - r.sqrt(),
    "log": _log,
    "exp": _exp,
}


def gamma(name: str, r: torch.Tensor | float, n_tokens: int) -> torch.Tensor:
    """Masked fraction at progress r (clipped to [1e-6, 1] as MaskGIT); n_tokens feeds log/exp."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown mask schedule {name!r}; choose from {sorted(SCHEDULES)}")
    r = torch.as_tensor(r, dtype=torch.float64)
    return SCHEDULES[name](r, n_tokens).clamp(1e-6, 1.0)
