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
    *,
    start_step: int = 0,
    token_temperature: float = 1.0,
) -> dict[int, torch.Tensor]:
    """Fill the masked tokens in parallel steps of a T-step schedule; return the ids observed at each sweet spot.

    transformer: (B, N) ids -> (B, N, K) logits (the model, or a chunked call of it with `mask_id`).
    tokens: (B, N) code ids (values under the mask are ignored); token_mask: (B, N)
    bool, True = unknown. Schedule step s (1-based) re-masks to floor(gamma(s/T) * M)
    tokens, M being the count masked at the start of that image. Decoding runs steps
    start_step + 1 .. T (MaskGIT's editing path: start_iter=2 of 12, so its first pass
    already unmasks down to gamma(3/12) * M). The result maps k (start_step < k <= T)
    to (B, N) ids: the state after step k with every still-masked position filled by
    that step's sample. Known tokens are never changed. Randomness comes only from
    `generator`, so one trajectory yields every sweet spot and the trajectory never
    depends on them.

    temperature anneals the Gumbel noise on the confidences that choose what stays
    masked; token_temperature is the softmax temperature of each token's draw,
    softmax(logits / token_temperature) (1.0: MaskGIT's categorical draw). The
    confidence stays the model's own log-probability of the drawn token, untempered,
    so token_temperature changes only which token is drawn.
    """
    if not 0 <= start_step < T:
        raise ValueError(f"start_step must lie in 0..T-1={T - 1}, got {start_step}")
    if token_temperature <= 0:
        raise ValueError(f"token_temperature must be > 0, got {token_temperature}")
    wanted = sorted(set(int(k) for k in sweet_spots))
    if not wanted or wanted[0] <= start_step or wanted[-1] > T:
        raise ValueError(f"sweet spots must lie in {start_step + 1}..T={T}, got {wanted}")
    mask_id = transformer.config.mask_id if mask_id is None else mask_id
    device = tokens.device
    unknown = token_mask.clone()  # (B, N) True where still masked
    ids = torch.where(unknown, torch.full_like(tokens, mask_id), tokens)  # (B, N)
    masked_at_start = unknown.sum(1, keepdim=True)  # (B, 1) M per image
    out = {}
    for t in range(start_step, T):
        logits = transformer(ids).float()  # (B, N, K)
        # Sample every position (Gumbel-max = a categorical draw), keep known tokens.
        sampled = (logits / token_temperature + _gumbel(logits.shape, generator, device)).argmax(-1)  # (B, N)
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
        fraction = gamma(schedule, ratio, masked_at_start)  # float64 as the spec; (B, 1) for log and exp
        mask_len = torch.floor(fraction * masked_at_start.double())  # (B, 1)
        still = unknown.sum(1, keepdim=True)
        mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(still - 1, mask_len)).long()
        cutoff = confidence.sort(-1).values.gather(-1, mask_len)  # (B, 1) the mask_len-th lowest
        unknown = confidence < cutoff  # (B, N)
        ids = torch.where(unknown, torch.full_like(sampled, mask_id), sampled)
    return out
