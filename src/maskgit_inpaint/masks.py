"""Pixel masks (True = missing) and their token masks.

Masks are generated from a seed, so every cell of a grid sees the same holes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("center",)


def center_box(n: int, size: int, fraction: float = 0.5) -> torch.Tensor:
    """The MaskGIT / Places protocol: a centered box of `fraction` x `fraction`; (n, 1, size, size)."""
    side = round(size * fraction)
    lo = (size - side) // 2
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    mask[:, :, lo:lo + side, lo:lo + side] = True
    return mask


def make(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    """`n` pixel masks (n, 1, size, size), True where missing. `seed` drives random kinds."""
    if kind == "center":
        return center_box(n, size)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {KINDS}")


def to_token_mask(mask: torch.Tensor, f: int) -> torch.Tensor:
    """(B, 1, H, W) pixel mask -> (B, H/f * W/f) token mask: a token is masked when its f x f patch touches a missing pixel."""
    return F.max_pool2d(mask.float(), kernel_size=f).flatten(1).bool()  # (B, h*w)


def feather(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Blend weight in [0, 1] for the generated image: 1 inside the hole, ramping to 0 over `width` pixels outside it."""
    weight = mask.float()  # (B, 1, H, W)
    if width <= 0:
        return weight
    # Each dilation step by one pixel adds a ring with a lower weight.
    ring = weight
    for step in range(1, width + 1):
        ring = F.max_pool2d(ring, kernel_size=3, stride=1, padding=1)
        weight = torch.maximum(weight, ring * (1 - step / (width + 1)))
    return weight


def random_token_mask(counts: torch.Tensor, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) counts -> (B, N) bool masks with exactly counts[b] positions chosen uniformly."""
    scores = torch.rand(len(counts), n_tokens, generator=generator, device=counts.device)  # (B, N)
    rank = scores.argsort(1).argsort(1)  # (B, N) rank of each position
    return rank < counts[:, None]
