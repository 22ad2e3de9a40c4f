"""Pixel masks (True = missing) and their token masks.

Masks are generated from a seed, and each image's mask from (seed, image index)
alone, so every cell of a grid (and any subset of images) sees the same holes.
Kinds: the MaskGIT / Places `center` box, LaMa-style free-form strokes (`thin`,
`medium`, `thick`; at most half the image) and `outpaint` (right half missing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MAX_STROKE_AREA = 0.5  # free-form masks never hide more than half the image


@dataclass(frozen=True)
class StrokeStyle:
    """A family of random brush strokes; lengths and widths are fractions of the image side."""

    width: tuple[float, float]  # brush diameter range
    strokes: tuple[int, int]  # strokes per image (inclusive range)
    vertices: tuple[int, int]  # polyline vertices per stroke (inclusive range)
    segment: tuple[float, float]  # length range of one polyline segment


# Scaled from LaMa's thin / medium / thick irregular masks at 256 px.
STROKES = {
    "thin": StrokeStyle(width=(0.02, 0.05), strokes=(4, 10), vertices=(4, 10), segment=(0.1, 0.3)),
    "medium": StrokeStyle(width=(0.06, 0.12), strokes=(2, 5), vertices=(3, 7), segment=(0.15, 0.35)),
    "thick": StrokeStyle(width=(0.15, 0.25), strokes=(1, 3), vertices=(2, 5), segment=(0.2, 0.4)),
}
KINDS = ("center", *STROKES, "outpaint")


def center_box(n: int, size: int, fraction: float = 0.5) -> torch.Tensor:
    """The MaskGIT / Places protocol: a centered box of `fraction` x `fraction`; (n, 1, size, size)."""
    side = round(size * fraction)
    lo = (size - side) // 2
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    mask[:, :, lo:lo + side, lo:lo + side] = True
    return mask


def outpaint_right(n: int, size: int) -> torch.Tensor:
    """Extend the image: its right half is missing; (n, 1, size, size)."""
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    mask[..., size - size // 2:] = True
    return mask


def _stroke(canvas: np.ndarray, style: StrokeStyle, rng: np.random.Generator) -> None:
    """Draw one random polyline with round joints onto `canvas` (uint8, 1 = missing) in place."""
    size = canvas.shape[0]
    width = max(1, round(rng.uniform(*style.width) * size))
    point = rng.uniform(0, size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(rng.integers(style.vertices[0], style.vertices[1] + 1)):
        angle += rng.normal(0, np.pi / 3)  # strokes wander rather than zig-zag
        length = rng.uniform(*style.segment) * size
        end = np.clip(point + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
        cv2.line(canvas, tuple(int(v) for v in point), tuple(int(v) for v in end), 1, width)
        cv2.circle(canvas, tuple(int(v) for v in end), width // 2, 1, -1)
        point = end


def free_form(style: StrokeStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) bool mask of random strokes; a stroke that would pass MAX_STROKE_AREA is dropped."""
    canvas = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(style.strokes[0], style.strokes[1] + 1)):
        trial = canvas.copy()
        _stroke(trial, style, rng)
        if trial.mean() <= MAX_STROKE_AREA:
            canvas = trial
    if not canvas.any():  # every stroke was too large: fall back to one of the narrowest width
        _stroke(canvas, StrokeStyle((style.width[0],) * 2, (1, 1), (1, 1), (style.segment[0],) * 2), rng)
    return canvas.astype(bool)


def make(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    """`n` pixel masks (n, 1, size, size), True where missing; image i's mask depends only on (seed, i)."""
    if kind == "center":
        return center_box(n, size)
    if kind == "outpaint":
        return outpaint_right(n, size)
    if kind in STROKES:
        kind_index = KINDS.index(kind)  # different kinds draw from different streams
        masks = [free_form(STROKES[kind], size, np.random.default_rng([seed, kind_index, i])) for i in range(n)]
        return torch.from_numpy(np.stack(masks))[:, None]  # (n, 1, size, size)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {KINDS}")


def to_token_mask(mask: torch.Tensor, f: int) -> torch.Tensor:
    """(B, 1, H, W) pixel mask -> (B, H/f * W/f) token mask: a token is masked when its f x f patch touches a missing pixel."""
    return F.max_pool2d(mask.float(), kernel_size=f).flatten(1).bool()  # (B, h*w)


def dilate_token_mask(token_mask: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, h*w) token mask on a square grid -> (B, h*w), grown by `cells` latent cells in all 8 directions.

    A square window, as MaskGIT's editing path grows its token box by one cell on every
    side, corners included (inference.py); cells past the border are dropped, not wrapped.
    """
    if cells < 0:
        raise ValueError(f"cells must be >= 0, got {cells}")
    side = math.isqrt(token_mask.shape[1])
    if side * side != token_mask.shape[1]:
        raise ValueError(f"token mask of {token_mask.shape[1]} tokens is not a square grid")
    if cells == 0:
        return token_mask
    grid = token_mask.reshape(-1, 1, side, side).float()  # (B, 1, h, w)
    # One (2c+1)-wide window = c successive 3x3 dilations; max_pool pads with -inf, so nothing enters from the border.
    return F.max_pool2d(grid, kernel_size=2 * cells + 1, stride=1, padding=cells).flatten(1).bool()  # (B, h*w)


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

