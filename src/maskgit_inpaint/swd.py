"""Sliced Wasserstein distance between Laplacian-pyramid patch sets (Karras et al. 2018).

A realism metric that needs no pretrained weights: at each pyramid level, 7x7
patches are taken from generated and real images, normalised per set and
channel, and compared by the mean Wasserstein-1 distance of their 1-D
projections on random directions. Patches are taken at the same positions in
both sets (less variance than independent draws; identical sets score 0), with
centres inside the mask for the masked-region variant. Reported x 1e3.

Every patch remembers its image, so the distance can be recomputed on any subset of
the images (a held-out half) and bootstrapped over images (`PatchSets.bootstrap`).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

_BLUR = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = (_BLUR[:, None] * _BLUR[None, :]).to(x)[None, None].repeat(x.shape[1], 1, 1, 1)  # (C, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid, current = [], images.float()
    for _ in range(levels - 1):
        down = _blur(current)[:, :, ::2, ::2]  # (B, C, H/2, W/2)
        up = F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False)
        pyramid.append(current - up)
        current = down
    return pyramid + [current]


class PatchSets:
    """Accumulates paired patch descriptors of generated and real images, batch by batch."""

    def __init__(self, levels: int = 3, patch: int = 7, per_image: int = 64, seed: int = 0, directions: int = 128):
        self.levels, self.patch, self.per_image, self.directions = levels, patch, per_image, directions
        self.generator = torch.Generator().manual_seed(seed)
        self.fake: list[list[torch.Tensor]] = [[] for _ in range(levels)]
        self.real: list[list[torch.Tensor]] = [[] for _ in range(levels)]
        self.owner: list[list[torch.Tensor]] = [[] for _ in range(levels)]  # image index of every patch
        self.images = 0  # images added so far
        self._projections: list[torch.Tensor] | None = None
        self._levels: list[_Level] | None = None  # built from the batches when first measured
        self._distances: dict[bytes | None, float] = {}  # by subset: a grid asks for each a few times

    def add(self, fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """fake, real: (B, 3, H, W); mask: (B, 1, H, W) bool or None (whole image)."""
        p = self.patch
        ids = self.images + torch.arange(len(fake))
        self.images += len(fake)
        for level, (f, r) in enumerate(zip(laplacian_pyramid(fake, self.levels), laplacian_pyramid(real, self.levels))):
            B, C, H, W = f.shape
            if H < p or W < p:
                continue
            valid = torch.ones(B, 1, H, W, dtype=torch.bool)
            if mask is not None:
                valid = F.interpolate(mask.float().cpu(), size=(H, W), mode="nearest").bool()
            border = torch.zeros_like(valid)
            border[:, :, p // 2:H - p // 2, p // 2:W - p // 2] = True  # whole patch inside the image
            weights = (valid & border).flatten(1).float()  # (B, H*W)
            usable = weights.sum(1) > 0
            if not usable.any():
                continue
            centres = torch.multinomial(weights[usable], self.per_image, replacement=True, generator=self.generator)
            for sets, img in ((self.fake[level], f), (self.real[level], r)):
                sets.append(_patches(img[usable.to(img.device)].cpu(), centres, p))
            self.owner[level].append(ids[usable].repeat_interleave(self.per_image))
        self._levels, self._distances = None, {}

    def _filled(self) -> list[_Level]:
        """The levels with patches, their batches joined once."""
        if self._levels is None:
            filled = [level for level in range(self.levels) if self.fake[level]]
            if self._projections is None:  # drawn once, so every subset and resample is measured along the same lines
                self._projections = [_unit_directions(self.fake[level][0].shape[1], self.directions, self.generator) for level in filled]
            self._levels = [_Level(torch.cat(self.fake[level]), torch.cat(self.real[level]), torch.cat(self.owner[level]), proj)
                            for level, proj in zip(filled, self._projections)]
        return self._levels

    def distance(self, images: torch.Tensor | None = None) -> float:
        """Mean over levels of the sliced Wasserstein distance, x 1e3; `images` (indices) restricts it to a subset."""
        key = None if images is None else torch.as_tensor(images).numpy().tobytes()
        if key not in self._distances:
            self._distances[key] = self._distance(images)
        return self._distances[key]

    def _distance(self, images: torch.Tensor | None) -> float:
        per_level = []
        for level in self._filled():
            if images is None:
                a, b = level.sorted_projections()
            else:
                keep = torch.isin(level.owner, torch.as_tensor(images))
                if keep.sum() < 2:
                    continue
                a, b = level.sorted_projections(keep, torch.as_tensor(images).numpy().tobytes())
            per_level.append((a - b).abs().mean())
        if not per_level:
            return float("nan")
        return float(torch.stack(per_level).mean() * 1e3)

    def bootstrap(self, counts: torch.Tensor, bins: int = 128) -> torch.Tensor:
        """The distance under each row of `counts` (R, images), how often each image is drawn; (R,) x 1e3.

        Sorting every resample would cost R sorts per level. Instead each direction's
        projections are binned once at the real set's quantiles, a resample's CDF is one
        matrix product of the counts with the per-image cumulative histograms, and each
        1-D distance the area between the two CDFs (trapezoid rule). A resample's own
        normalisation moves each set's projections by about an affine map (its exact mean
        and scale per channel, the channel mix regressed on the projection); its effect
        on the distance is added to first order, from the full sets' sorted projections.
        Binning biases the level a little, not the spread: `resample` centres the
        replicates on the exact `distance()`.
        """
        counts = counts.float()
        counts_key = hashlib.sha1(counts.numpy().tobytes()).digest() + bins.to_bytes(4, "little")
        per_level = []
        for level in self._filled():
            a, b = level.sorted_projections()
            real_side = _shared(level.real_key + b"projected", lambda: _Projected(level.real, level.owner, level.proj, self.images))
            # Edges at the real set's quantiles: the real side's CDFs are then the same for every cell, and shared.
            real_edges = _shared(level.real_key + b"edges" + str(bins).encode(), lambda: _quantile_edges(real_side.values, bins))
            real_cdf, slope_r, shift_r = _shared(level.real_key + b"cdf" + counts_key, lambda: (
                real_side.cdf(counts, real_edges), *real_side.renormalisation(counts)))
            fake_side = _Projected(level.fake, level.owner, level.proj, self.images)
            # The outer edges take in the fake values beyond the real range (the real CDF is 0 and 1 there).
            edges = real_edges.clone()
            edges[:, 0] = torch.minimum(edges[:, 0], fake_side.values.min(0).values)
            edges[:, -1] = torch.maximum(edges[:, -1], fake_side.values.max(0).values)
            diff = (fake_side.cdf(counts, edges) - real_cdf).abs()  # (R, K, E)
            area = ((diff[..., 1:] + diff[..., :-1]) / 2 * (edges[:, 1:] - edges[:, :-1])).sum(-1)  # (R, K)
            # Renormalised, fake -> slope_f * v + shift_f and real -> slope_r * v + shift_r: to first order
            # the distance is slope_r * (area + (slope_f / slope_r - 1) * E[sign * fake] + (shift_f - shift_r) / slope_r * E[sign]).
            slope_f, shift_f = fake_side.renormalisation(counts)
            sign = torch.sign(a - b)  # (M, K): where the fake quantile lies above the real one
            scale_term, shift_term = (sign * a).mean(0), sign.mean(0)  # (K,)
            area = slope_r * (area + (slope_f / slope_r - 1) * scale_term + (shift_f - shift_r) / slope_r * shift_term)
            per_level.append(area.mean(-1))
        if not per_level:
            return torch.full((len(counts),), float("nan"))
        return torch.stack(per_level).mean(0) * 1e3

    def resample(self, groups: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
        """Bootstrap replicates of `distance(images)` for each (counts (R, images), images or None for all) group.

        Counts are zero off each group's subset. The binned replicates keep their spread and are
        centred on the subset's exact distance; all groups share one binning.
        """
        bases = [torch.ones(1, self.images) if images is None
                 else torch.zeros(1, self.images).index_fill_(1, torch.as_tensor(images), 1.0) for _, images in groups]
        binned = self.bootstrap(torch.cat([row for base, (counts, _) in zip(bases, groups) for row in (base, counts.float())]))
        out, at = [], 0
        for counts, images in groups:
            out.append(binned[at + 1:at + 1 + len(counts)] - binned[at] + self.distance(images))
            at += 1 + len(counts)
        return out


class _Level:
    """One pyramid level's paired patches, the image of each, and its directions."""

    def __init__(self, fake: torch.Tensor, real: torch.Tensor, owner: torch.Tensor, proj: torch.Tensor):
        self.fake, self.real, self.owner, self.proj = fake, real, owner, proj  # (M, D), (M, D), (M,), (D, K)
        # Every cell of a mask kind has the same real side (same images, positions, directions): shared by this key.
        self.real_key = _digest(real, owner, proj)
        self._all: tuple[torch.Tensor, torch.Tensor] | None = None

    def sorted_projections(self, keep: torch.Tensor | None = None, subset: bytes = b"") -> tuple[torch.Tensor, torch.Tensor]:
        """(fake, real) normalised projections, each sorted per direction (M, K): of all patches or the `keep` rows."""
        if keep is None and self._all is not None:
            return self._all
        fake, real = (self.fake, self.real) if keep is None else (self.fake[keep], self.real[keep])
        a = torch.sort(_normalise(fake) @ self.proj, 0).values
        b = _shared(self.real_key + b"sorted" + subset, lambda: torch.sort(_normalise(real) @ self.proj, 0).values)
        if keep is None:
            self._all = a, b
        return a, b


class _Projected:
    """One patch set's normalised projections, with what a resample needs to re-normalise them cheaply."""

    def __init__(self, descriptors: torch.Tensor, owner: torch.Tensor, proj: torch.Tensor, images: int):
        M, D = descriptors.shape
        d = descriptors.view(M, 3, D // 3)
        self.images, self.owner, self.per_channel = images, owner, D // 3
        self.mean, self.std = d.mean(dim=(0, 2)), d.std(dim=(0, 2)).clamp(min=1e-8)  # (3,): the full set's normalisation
        blocks = proj.view(3, D // 3, -1)  # (3, P, K): each channel's part of every direction
        parts = torch.einsum("mcp,cpk->cmk", (d - self.mean[None, :, None]) / self.std[None, :, None], blocks)  # (3, M, K)
        self.values = parts.sum(0)  # (M, K) = _normalise(descriptors) @ proj
        centred = self.values - self.values.mean(0)
        # How much of the projection each channel carries: a change of one channel's scale moves it by that share.
        self.share = torch.einsum("cmk,mk->ck", parts - parts.mean(1, keepdim=True), centred) / centred.pow(2).sum(0).clamp(min=1e-12)  # (3, K)
        self.channel_sums = blocks.sum(1)  # (3, K)
        self.sums = torch.zeros(images, 3).index_add_(0, owner, d.sum(2))  # per image and channel: sum, sum of squares
        self.squares = torch.zeros(images, 3).index_add_(0, owner, d.pow(2).sum(2))
        self.rows = torch.bincount(owner, minlength=images).float()  # patches per image

    def cdf(self, counts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """(R, K, E): each resample's CDF of the (full-set normalised) projections at `edges` (K, E)."""
        K, E = edges.shape
        below = torch.searchsorted(edges, self.values.T.contiguous()).clamp(max=E - 1)  # (K, M): first edge >= value
        flat = (self.owner[None, :] * K + torch.arange(K)[:, None]) * E + below
        hist = torch.zeros(self.images * K * E).index_add_(0, flat.flatten(), torch.ones(flat.numel()))
        cdf = (counts @ hist.view(self.images, K, E).cumsum(-1).view(self.images, K * E)).view(-1, K, E)
        return cdf / (counts @ self.rows).clamp(min=1)[:, None, None]

    def renormalisation(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slope, shift), each (R, K): a resample's own normalisation maps a projection v to about slope * v + shift."""
        n = (counts @ self.rows)[:, None] * self.per_channel  # values per channel drawn
        mean = (counts @ self.sums) / n  # (R, 3), exact, from per-image sums
        var = ((counts @ self.squares) / n - mean.pow(2)).clamp(min=0) * n / (n - 1).clamp(min=1)
        std = var.sqrt().clamp(min=1e-8)
        return 1 + (self.std / std - 1) @ self.share, ((self.mean - mean) / std) @ self.channel_sums


def _quantile_edges(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(K, bins + 1) edges per direction of (M, K) values: the extremes and the inner quantiles (of a subsample)."""
    inner = torch.quantile(values[:: max(1, len(values) // 8192)], torch.linspace(0, 1, bins + 1)[1:-1], dim=0)
    return torch.cat([values.min(0, keepdim=True).values, inner, values.max(0, keepdim=True).values]).T.contiguous()


# The real side of a grid's patch sets is the same in every cell of a mask kind: what is
# computed from it alone (sorted projections, CDFs under the resamples) is kept here.
_SHARED: OrderedDict[bytes, object] = OrderedDict()
_SHARED_ENTRIES = 96
_shared_lock = threading.Lock()


def _shared(key: bytes, make):
    with _shared_lock:
        if key in _SHARED:
            _SHARED.move_to_end(key)
            return _SHARED[key]
    value = make()
    with _shared_lock:
        _SHARED[key] = value
        while len(_SHARED) > _SHARED_ENTRIES:
            _SHARED.popitem(last=False)
    return value


def _digest(*tensors: torch.Tensor) -> bytes:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.digest()


def _unit_directions(dims: int, count: int, generator: torch.Generator) -> torch.Tensor:
    proj = torch.randn(dims, count, generator=generator)
    return proj / proj.norm(dim=0, keepdim=True)  # (dims, count) unit vectors


def _patches(images: torch.Tensor, centres: torch.Tensor, p: int) -> torch.Tensor:
    """(b, C, H, W) images, (b, n) flat centre indices -> (b*n, C*p*p) patch descriptors."""
    b, C, H, W = images.shape
    offsets = torch.arange(p) - p // 2
    rows = (centres // W)[:, :, None, None] + offsets[None, None, :, None]  # (b, n, p, 1)
    cols = (centres % W)[:, :, None, None] + offsets[None, None, None, :]  # (b, n, 1, p)
    batch = torch.arange(b)[:, None, None, None]
    picked = images[batch, :, rows, cols]  # (b, n, p, p, C): advanced indices first
    return picked.permute(0, 1, 4, 2, 3).reshape(-1, C * p * p)


def _normalise(descriptors: torch.Tensor) -> torch.Tensor:
    """Per set: zero mean, unit std per channel (the 3 colour planes of each patch)."""
    M, D = descriptors.shape
    d = descriptors.view(M, 3, D // 3)
    d = (d - d.mean(dim=(0, 2), keepdim=True)) / d.std(dim=(0, 2), keepdim=True).clamp(min=1e-8)
    return d.reshape(M, D)
