"""The random token masks of masked visual token modeling (MVTM) training.

Apart from masks.py (pixel holes for evaluation), so an edit to the holes does not
retrain the transformer.
"""
from __future__ import annotations

import torch


def random_token_mask(counts: torch.Tensor, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) counts -> (B, N) bool masks with exactly counts[b] positions chosen uniformly."""
    scores = torch.rand(len(counts), n_tokens, generator=generator, device=counts.device)  # (B, N)
    rank = scores.argsort(1).argsort(1)  # (B, N) rank of each position
    return rank < counts[:, None]
