"""Pixel masks (True = missing) and their token masks.

Masks are generated from a seed, and each image's mask from (seed, image index)
alone, so every cell of a grid (and any subset of images) sees the same holes.
Kinds: the MaskGIT / Places `center` box, LaMa's free-form masks (`thin`,
`medium`, `thick`: strokes, or boxes for medium and thick; at most half the
image), `outpaint` (right half missing) and `random_tokens` (the seed
experiment's random subset of tokens). docs/masks.md compares the free-form
kinds with LaMa's generators.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MAX_STROKE_AREA = 0.5  # free-form masks never hide more than half the image (LaMa's max_tamper_area)
PX = 1 / 256  # one pixel of LaMa's 256 px configs, as a fraction of the image side


@dataclass(frozen=True)
class StrokeStyle:
    """LaMa's irregular masks: polylines of straight segments; lengths and widths are fractions of the image side."""

    strokes: tuple[int, int]  # polylines per mask (inclusive range)
    width: tuple[float, float]  # brush diameter, drawn anew for every segment (inclusive range at 256 px)
    length: tuple[float, float]  # of one segment (inclusive range at 256 px)
    segments: tuple[int, int] = (1, 5)  # per polyline (inclusive range)
    angles: int = 4  # a segment heads at 0.01 + k radians, k < angles; every other polyline mirrored


@dataclass(frozen=True)
class BoxStyle:
    """LaMa's box masks: axis-aligned filled rectangles; sides and margin are fractions of the image side."""

    boxes: tuple[int, int]  # rectangles per mask (inclusive range)
    side: tuple[float, float]  # width and height, each drawn on its own (inclusive range at 256 px)
    margin: float  # kept free of boxes along every edge


@dataclass(frozen=True)
class FreeForm:
    """One LaMa mask family: each mask is either strokes or, with probability `box_share`, boxes."""

    strokes: StrokeStyle
    boxes: BoxStyle | None = None
    box_share: float = 0.0


# LaMa's configs/data_gen/random_{thin,medium,thick}_256.yaml, as LaMa draws them at 256 px (docs/masks.md).
# Their box_proba 0.3 sits beside irregular_proba 1, and LaMa normalises the two: boxes in 0.3 / 1.3 of masks.
# Stroke counts reach max_times + 1 (4-51 for max_times 50): LaMa's wrapper adds one before randint's open bound.
FREE_FORM = {
    "thin": FreeForm(StrokeStyle(strokes=(4, 51), width=(5 * PX, 14 * PX), length=(10 * PX, 49 * PX))),
    "medium": FreeForm(StrokeStyle(strokes=(4, 6), width=(5 * PX, 54 * PX), length=(10 * PX, 109 * PX)),
                       BoxStyle(boxes=(1, 5), side=(10 * PX, 50 * PX), margin=0.0), box_share=0.3 / 1.3),
    "thick": FreeForm(StrokeStyle(strokes=(1, 6), width=(5 * PX, 104 * PX), length=(10 * PX, 209 * PX)),
                      BoxStyle(boxes=(1, 3), side=(30 * PX, 150 * PX), margin=10 * PX), box_share=0.3 / 1.3),
}
KINDS = ("center", *FREE_FORM, "outpaint", "random_tokens")


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


def _pixels(span: tuple[float, float], size: int, rng: np.random.Generator) -> int:
    """A length drawn uniformly from `span` (fractions of the side) in whole pixels, at least one; at 256 px, LaMa's integer draw."""
    return max(1, int(rng.uniform(span[0], span[1] + PX) * size))


def strokes(style: StrokeStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint8 mask (1 = missing) of random polylines, drawn as LaMa's make_random_irregular_mask draws them."""
    canvas = np.zeros((size, size), np.uint8)
    for stroke in range(rng.integers(style.strokes[0], style.strokes[1] + 1)):
        point = rng.integers(0, size, 2)  # (x, y)
        for _ in range(rng.integers(style.segments[0], style.segments[1] + 1)):
            angle = 0.01 + rng.integers(style.angles)
            if stroke % 2 == 0:  # mirrored, so that strokes head left as often as right
                angle = 2 * np.pi - angle
            length = _pixels(style.length, size, rng)
            width = _pixels(style.width, size, rng)
            end = np.clip((point + length * np.array([np.sin(angle), np.cos(angle)])).astype(int), 0, size)  # (x, y)
            cv2.line(canvas, tuple(point.tolist()), tuple(end.tolist()), 1, width)  # OpenCV rounds the ends of thick lines
            point = end
    return canvas


def boxes(style: BoxStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint8 mask (1 = missing) of axis-aligned filled rectangles, as LaMa's make_random_rectangle_mask draws them."""
    canvas = np.zeros((size, size), np.uint8)
    margin = int(style.margin * size)
    for _ in range(rng.integers(style.boxes[0], style.boxes[1] + 1)):
        width, height = _pixels(style.side, size, rng), _pixels(style.side, size, rng)
        x = rng.integers(margin, size - margin - width + 1)
        y = rng.integers(margin, size - margin - height + 1)
        canvas[y:y + height, x:x + width] = 1
    return canvas


def free_form(style: FreeForm, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) bool mask of the LaMa family `style` that hides at most MAX_STROKE_AREA of the image.

    LaMa draws five whole masks per image, drops those over the limit and keeps one of the rest at
    random: a draw from the masks under the limit. Drawing whole masks until one is under the limit
    gives that same distribution (where all five fail, LaMa drops the image; here it keeps its place).
    """
    while True:  # ends soon: thick, the kind refused most, is under the limit two times in three
        if style.boxes is not None and rng.random() < style.box_share:
            mask = boxes(style.boxes, size, rng)
        else:
            mask = strokes(style.strokes, size, rng)
        if mask.mean() <= MAX_STROKE_AREA:
            return mask.astype(bool)


def random_tokens(n: int, size: int, seed: int, *, f: int, ratio: float) -> torch.Tensor:
    """The seed experiment's holes: round(ratio * tokens) random tokens per image (at least one), as their f x f patches; (n, 1, size, size)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"token_ratio must lie in (0, 1], got {ratio}")
    grid = size // f
    count = max(1, round(ratio * grid * grid))
    kind_index = KINDS.index("random_tokens")
    chosen = np.zeros((n, grid * grid), bool)  # (n, h*w)
    for i in range(n):
        chosen[i, np.random.default_rng([seed, kind_index, i]).choice(grid * grid, count, replace=False)] = True
    tokens = torch.from_numpy(chosen).view(n, 1, grid, grid)  # (n, 1, h, w)
    return tokens.repeat_interleave(f, 2).repeat_interleave(f, 3)  # (n, 1, size, size)


def make(kind: str, n: int, size: int, seed: int, *, f: int | None = None, token_ratio: float | None = None) -> torch.Tensor:
    """`n` pixel masks (n, 1, size, size), True where missing; image i's mask depends only on (seed, i).

    `f` is the tokenizer's downsampling and `token_ratio` the share of tokens random_tokens hides
    (params eval.random_token_ratio); random_tokens needs both, the other kinds neither.
    """
    if f is not None and size % f:
        raise ValueError(f"image size {size} is not divisible by the tokenizer's downsampling f={f}")
    if kind == "center":
        return center_box(n, size)
    if kind == "outpaint":
        return outpaint_right(n, size)
    if kind in FREE_FORM:
        kind_index = KINDS.index(kind)  # different kinds draw from different streams
        masks = [free_form(FREE_FORM[kind], size, np.random.default_rng([seed, kind_index, i])) for i in range(n)]
        return torch.from_numpy(np.stack(masks))[:, None]  # (n, 1, size, size)
    if kind == "random_tokens":
        if f is None or token_ratio is None:
            raise ValueError("random_tokens masks need f (the tokenizer's downsampling) and token_ratio (params eval.random_token_ratio)")
        return random_tokens(n, size, seed, f=f, ratio=token_ratio)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {KINDS}")


def area_buckets(hidden: np.ndarray, pixels: int, width: float = 0.1) -> np.ndarray:
    """(N,) missing pixels of images of `pixels` pixels -> (N,) labels of the share each hides, in buckets of `width`: "0-10%", ...

    As LaMa's InpaintingEvaluator groups its scores: a bucket holds its lower edge and not its upper
    one (a 10% hole is in "10-20%"), except the last, which also holds 100%. Shares are compared in
    whole pixels, so a hole exactly on an edge is never moved by float rounding.
    """
    bins = round(1 / width)
    if bins < 1 or not np.isclose(bins * width, 1):
        raise ValueError(f"bucket width {width} must split [0, 1] into whole buckets, e.g. 0.1 or 0.05")
    index = np.minimum(np.asarray(hidden, dtype=np.int64) * bins // pixels, bins - 1)  # (N,)
    edges = [f"{100 * k / bins:g}" for k in range(bins + 1)]
    labels = np.array([f"{lo}-{hi}%" for lo, hi in zip(edges, edges[1:])])
    return labels[index]


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

