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

Schedule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bits(n: torch.Tensor) -> torch.Tensor:
    # Counts below 2 are taken as 2: log2 would be 0 or -inf there (see gamma).
    return torch.log2(n.clamp(min=2))


def _log(r: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return -torch.log2(r) / _bits(n)


def _exp(r: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return 1 - torch.exp2(-_bits(n) * (1 - r))


SCHEDULES: dict[str, Schedule] = {
    "linear": lambda r, n: 1 - r,
    "cosine": lambda r, n: torch.cos(math.pi / 2 * r),
    "square": lambda r, n: 1 - r**2,
    "cubic": lambda r, n: 1 - r**3,
    "sqrt": lambda r, n: 1 - r.sqrt(),
    "log": _log,
    "exp": _exp,
}


def gamma(name: str, r: torch.Tensor | float, n_tokens: torch.Tensor | int) -> torch.Tensor:
    """Masked fraction at progress r, clipped to [1e-6, 1] as MaskGIT; float64.

    n_tokens is the token count the log and exp schedules scale by: the sequence
    length N in training, each image's count masked at the start (B, 1) in decoding
    (libml/parallel_decode.py passes unknown_number_in_the_beginning). log and exp
    broadcast r against it; the other schedules ignore it. Counts 0 and 1 are taken
    as 2, where MaskGIT's formula gives inf or NaN: decoding cannot tell, since the
    count kept masked, max(1, min(still masked - 1, floor(gamma * M))), is 1 for any
    gamma when M = 1 (the token stays masked to the last step, as in MaskGIT) and
    nothing is masked when M = 0.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown mask schedule {name!r}; choose from {sorted(SCHEDULES)}")
    r = torch.as_tensor(r, dtype=torch.float64)
    n = torch.as_tensor(n_tokens, dtype=torch.float64)
    return SCHEDULES[name](r, n).clamp(1e-6, 1.0)
