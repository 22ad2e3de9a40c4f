"""Sliced Wasserstein distance between Laplacian-pyramid patch sets (Karras et al. 2018).

A realism metric that needs no pretrained weights: at each pyramid level, 7x7
patches are taken from generated and real images, normalised per set and
channel, and compared by the mean Wasserstein-1 distance of their 1-D
projections on random directions. Patches are taken at the same positions in
both sets (less variance than independent draws; identical sets score 0), with
centres inside the mask for the masked-region variant. Reported x 1e3.
"""
from __future__ import annotations

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

    def __init__(self, levels: int = 3, patch: int = 7, per_image: int = 64, seed: int = 0):
        self.levels, self.patch, self.per_image = levels, patch, per_image
        self.generator = torch.Generator().manual_seed(seed)
        self.fake: list[list[torch.Tensor]] = [[] for _ in range(levels)]
        self.real: list[list[torch.Tensor]] = [[] for _ in range(levels)]

    def add(self, fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """fake, real: (B, 3, H, W); mask: (B, 1, H, W) bool or None (whole image)."""
        p = self.patch
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

    def distance(self, directions: int = 128) -> float:
        """Mean over levels of the sliced Wasserstein distance, x 1e3."""
        per_level = []
        for fake, real in zip(self.fake, self.real):
            if not fake:
                continue
            a, b = _normalise(torch.cat(fake)), _normalise(torch.cat(real))  # (M, D)
            proj = torch.randn(a.shape[1], directions, generator=self.generator)
            proj = proj / proj.norm(dim=0, keepdim=True)  # (D, directions) unit vectors
            per_level.append((torch.sort(a @ proj, 0).values - torch.sort(b @ proj, 0).values).abs().mean())
        if not per_level:
            return float("nan")
        return float(torch.stack(per_level).mean() * 1e3)


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
