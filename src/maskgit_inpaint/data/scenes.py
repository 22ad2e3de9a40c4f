"""Procedural outdoor scenes for the embedded sample.

Structure dominates on purpose (sky gradients, horizons, ridges, skylines,
reflections, sun discs), with mild pixel noise: a small tokenizer and transformer
can learn it on a laptop CPU in minutes, and completing a masked box needs the
context (where the horizon runs, which way the ridge goes, what the sky colour is).
"""
from __future__ import annotations

import numpy as np

# Places365-Standard category names (a subset), one renderer each.
CATEGORIES = ("/c/coast", "/d/desert/sand", "/f/field/wild", "/l/lake/natural", "/m/mountain", "/s/skyscraper")

# (zenith, horizon) sky colours for day, sunset and dusk, RGB in [0, 1].
SKIES = (
    ((0.20, 0.45, 0.85), (0.70, 0.85, 0.97)),
    ((0.35, 0.30, 0.60), (0.98, 0.62, 0.30)),
    ((0.08, 0.10, 0.30), (0.55, 0.35, 0.55)),
)


def _ridge(rng: np.random.Generator, size: int, base: float, amplitude: float, roughness: int) -> np.ndarray:
    """A ridge line y(x) in pixels: a few random sines, smooth at low roughness."""
    x = np.linspace(0.0, 1.0, size)
    y = np.full(size, base * size)
    for octave in range(1, roughness + 1):
        y += amplitude * size / octave * np.sin(2 * np.pi * (octave * x + rng.uniform()) * rng.uniform(0.5, 1.5))
    return y


def _fill_below(img: np.ndarray, line: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Paint everything below `line` with a vertical gradient top -> bottom colour; returns the mask."""
    size = img.shape[0]
    rows = np.arange(size)[:, None]  # (H, 1)
    below = rows >= line[None, :]  # (H, W)
    t = (rows / max(size - 1, 1))[..., None]  # (H, 1, 1)
    gradient = (1 - t) * np.asarray(top) + t * np.asarray(bottom)  # (H, 1, 3)
    img[below] = np.broadcast_to(gradient, img.shape)[below]
    return below


def _sky(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    zenith, horizon = SKIES[rng.integers(len(SKIES))]
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    img = (1 - t) * np.asarray(zenith) + t * np.asarray(horizon)
    img = np.broadcast_to(img, (size, size, 3)).copy()
    if rng.uniform() < 0.6:  # sun: a disc with a soft glow
        cx, cy = rng.uniform(0.15, 0.85) * size, rng.uniform(0.1, 0.45) * size
        r = rng.uniform(0.05, 0.1) * size
        yy, xx = np.mgrid[0:size, 0:size]
        d = np.hypot(xx - cx, yy - cy)
        glow = np.clip(1.5 - d / (2.5 * r), 0, 1)[..., None] * 0.35
        img = img + glow * (np.array([1.0, 0.9, 0.6]) - img)
        img[d < r] = (1.0, 0.95, 0.75)
    return img, int(rng.uniform(0.45, 0.65) * size)


def _water(img: np.ndarray, rng: np.random.Generator, horizon: int, tint: tuple[float, float, float]) -> None:
    """Mirror what is above the horizon, darkened and tinted, with horizontal ripples."""
    size = img.shape[0]
    depth = size - horizon
    mirror = img[max(horizon - depth, 0):horizon][::-1]
    mirror = np.pad(mirror, ((0, depth - len(mirror)), (0, 0), (0, 0)), mode="edge")
    shift = np.round(rng.uniform(0.5, 1.5) * np.sin(np.arange(depth) * rng.uniform(0.8, 1.6))).astype(int)
    rippled = np.stack([np.roll(row, s, axis=0) for row, s in zip(mirror, shift)])
    img[horizon:] = 0.55 * rippled + 0.45 * np.asarray(tint)


def _coast(rng, size):
    img, horizon = _sky(rng, size)
    _water(img, rng, horizon, (0.10, 0.30, 0.50))
    beach = _ridge(rng, size, rng.uniform(0.78, 0.9), 0.03, 2)
    _fill_below(img, beach, (0.90, 0.80, 0.60), (0.80, 0.68, 0.48))
    return img


def _desert(rng, size):
    img, horizon = _sky(rng, size)
    for layer, shade in ((0, 0.0), (1, 0.12)):
        dune = _ridge(rng, size, horizon / size + 0.12 * layer, 0.05, 2)
        c = np.array([0.90, 0.70, 0.42]) - shade
        _fill_below(img, dune, c, c - 0.15)
    return img


def _field(rng, size):
    img, horizon = _sky(rng, size)
    hill = _ridge(rng, size, horizon / size, 0.03, 2)
    green = np.array([0.35, 0.60, 0.25]) * rng.uniform(0.8, 1.2)
    below = _fill_below(img, hill, green, green * 0.6)
    rows = np.arange(size)[:, None, None]
    stripes = 0.06 * np.sign(np.sin(rows * rng.uniform(0.8, 1.4)))  # furrows: a texture with structure
    img += np.where(below[..., None], stripes, 0)
    return img


def _mountain(rng, size):
    img, horizon = _sky(rng, size)
    far = _ridge(rng, size, horizon / size - 0.15, 0.08, 3)
    _fill_below(img, far, (0.45, 0.50, 0.65), (0.40, 0.45, 0.55))
    near = _ridge(rng, size, horizon / size + 0.05, 0.06, 4)
    _fill_below(img, near, (0.30, 0.40, 0.30), (0.18, 0.25, 0.16))
    return img


def _lake(rng, size):
    img, horizon = _sky(rng, size)
    hills = np.minimum(_ridge(rng, size, horizon / size - 0.12, 0.06, 3), horizon)
    _fill_below(img, hills, (0.25, 0.40, 0.28), (0.20, 0.32, 0.22))
    _water(img, rng, horizon, (0.12, 0.25, 0.35))
    return img


def _skyscraper(rng, size):
    img, horizon = _sky(rng, size)
    x = 0
    lit = rng.uniform() < 0.5
    while x < size:
        w = int(rng.integers(size // 10, size // 4))
        top = int(rng.uniform(0.1, 0.5) * size)
        grey = rng.uniform(0.15, 0.4)
        img[top:, x:x + w] = (grey, grey, grey * 1.1)
        window = (1.0, 0.85, 0.4) if lit else (grey + 0.25, grey + 0.3, grey + 0.35)
        img[top + 2:size:4, x + 1:x + w - 1:3] = window  # a regular window grid
        x += w + int(rng.integers(0, 3))
    street = np.full(size, 0.88 * size)
    _fill_below(img, street, (0.25, 0.25, 0.27), (0.20, 0.20, 0.22))
    return img


RENDERERS = {
    "/c/coast": _coast,
    "/d/desert/sand": _desert,
    "/f/field/wild": _field,
    "/l/lake/natural": _lake,
    "/m/mountain": _mountain,
    "/s/skyscraper": _skyscraper,
}


def render(category: str, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """One scene of `category`: uint8 array (size, size, 3); optionally mirrored."""
    img = RENDERERS[category](rng, size)
    if rng.uniform() < 0.5:
        img = img[:, ::-1]
    img = img + rng.normal(0.0, noise, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
