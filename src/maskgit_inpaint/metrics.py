"""Fidelity metrics on the whole image and on the missing region, batched on the device.

Images are (B, 3, H, W) in [-1, 1]; masks are (B, 1, H, W) bool, True where a pixel
was missing. Every function returns one value per image.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-image mean of (B, C, H, W) values over the mask (all pixels when None)."""
    if mask is None:
        return values.flatten(1).mean(1)
    weight = mask.expand_as(values).float()
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB with data range 1; capped at 100 dB for identical images."""
    mse = _masked_mean((_unit(pred) - _unit(target)).pow(2), mask)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5); with a mask, the SSIM map averaged over it."""
    _, ssim_map = structural_similarity_index_measure(
        _unit(pred), _unit(target), data_range=1.0, reduction="none", return_full_image=True
    )
    return _masked_mean(ssim_map, mask)
