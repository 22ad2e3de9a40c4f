"""MaskGIT's iterative parallel decoding.

Follows libml/parallel_decode.py, batched over images with per-image mask counts;
the mask schedules gamma it unmasks by live in schedules.py.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from maskgit_inpaint.schedules import gamma


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def decode(
    transformer: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    schedule: str,
    T: int,
    sweet_spots: Iterable[int],
    temperature: float = 4.5,
    generator: torch.Generator | None = None,
    mask_id: int | None = None,
) -> dict[int, torch.Tensor]:
    """Fill the masked tokens in T parallel steps; return the ids observed at each sweet spot.

    transformer: (B, N) ids -> (B, N, K) logits (the model, or a chunked call of it with `mask_id`).
    tokens: (B, N) code ids (values under the mask are ignored); token_mask: (B, N)
    bool, True = unknown. The result maps k (1 <= k <= T) to (B, N) ids: the state
    after step k with every still-masked position filled by that step's sample.
    Known tokens are never changed. Randomness comes only from `generator`, so one
    trajectory yields every sweet spot and the trajectory never depends on them.
    """
    wanted = sorted(set(int(k) for k in sweet_spots))
    if not wanted or wanted[0] < 1 or wanted[-1] > T:
        raise ValueError(f"sweet spots must lie in 1..T={T}, got {wanted}")
    mask_id = transformer.config.mask_id if mask_id is None else mask_id
    device = tokens.device
    B, N = tokens.shape
    unknown = token_mask.clone()  # (B, N) True where still masked
    ids = torch.where(unknown, torch.full_like(tokens, mask_id), tokens)  # (B, N)
    masked_at_start = unknown.sum(1, keepdim=True)  # (B, 1) M per image
    out = {}
    for t in range(T):
        logits = transformer(ids).float()  # (B, N, K)
        # Sample every position (Gumbel-max = a categorical draw), keep known tokens.
        sampled = (logits + _gumbel(logits.shape, generator, device)).argmax(-1)  # (B, N)
        sampled = torch.where(unknown, sampled, ids)
        if t + 1 in wanted:
            out[t + 1] = sampled.clone()
        if t + 1 == wanted[-1]:  # stopping at sweet spot k of T: later steps are never observed
            break
        ratio = (t + 1) / T
        logp = torch.log_softmax(logits, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
        confidence = logp + temperature * (1 - ratio) * _gumbel(logp.shape, generator, device)
        confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
        # Per image: keep floor(gamma * M) masked, at least 1 and at most (still masked - 1).
        mask_len = torch.floor(gamma(schedule, ratio, N).item() * masked_at_start.double())  # (B, 1), float64 as the spec
        still = unknown.sum(1, keepdim=True)
        mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(still - 1, mask_len)).long()
        cutoff = confidence.sort(-1).values.gather(-1, mask_len)  # (B, 1) the mask_len-th lowest
        unknown = confidence < cutoff  # (B, N)
        ids = torch.where(unknown, torch.full_like(sampled, mask_id), sampled)
    return out
