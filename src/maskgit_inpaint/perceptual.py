"""Perceptual metrics with pretrained backbones: LPIPS (AlexNet) and FID (Inception pool3).

Both need ImageNet-trained weights that are not in any package: LPIPS's AlexNet trunk
(torchvision) and the FID Inception port (pytorch-fid). They are looked up in the torch
hub cache, downloaded only when allowed, and a missing file gives an unavailable
`Backbone` with the fix in its reason: an evaluation table shows "n/a (why)" rather
than a number from random weights.

Images are (B, 3, H, W) in [-1, 1]; masks are (B, 1, H, W) bool, True where a pixel
was missing.
"""
from __future__ import annotations

import socket
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import lpips
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

from maskgit_inpaint.io import atomic_file

DOWNLOAD_TIMEOUT_S = 20.0
ALEXNET_FILE = Path(urlparse(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).path).name  # alexnet-owt-7be5be79.pth
VGG16_FILE = Path(urlparse(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url).path).name  # vgg16-397923af.pth
LPIPS_TRUNKS = {"alex": ALEXNET_FILE, "vgg": VGG16_FILE}  # the metric uses alex; taming's training loss uses vgg
INCEPTION_FILE = Path(urlparse(FID_WEIGHTS_URL).path).name  # pt_inception-2015-12-05-6726825d.pth


@dataclass(frozen=True)
class Backbone:
    """A metric network, or the reason there is none; exactly one of the two is set."""

    network: torch.nn.Module | None
    reason: str | None

    def __post_init__(self) -> None:
        if (self.network is None) == (self.reason is None):
            raise ValueError("Backbone needs exactly one of network and reason")

    @property
    def available(self) -> bool:
        return self.network is not None


def hub_checkpoints() -> Path:
    """Where torchvision and pytorch-fid look for (and download) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _resolve(what: str, file_name: str, download: bool, build: Callable[[], torch.nn.Module],
             device: torch.device) -> Backbone:
    """Build from the hub cache, or download into it when allowed; any failure becomes a reason.

    Failures are caught broadly on purpose: offline, timeouts, a truncated or corrupt
    file all mean the same thing to the table (no trustworthy number), and the error
    text goes into the reason.
    """
    directory = hub_checkpoints()
    fix = f"copy {file_name} into {directory}, or allow downloads (download_weights: true in the stage's params section)"
    if not (directory / file_name).is_file() and not download:
        return Backbone(None, f"{what} needs {file_name}, not found in {directory}; {fix}")
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deprecated since 0.13", category=UserWarning)  # lpips's `pretrained=`
            network = build()
    except Exception as error:  # noqa: BLE001 - see docstring
        return Backbone(None, f"{what} could not load {file_name} (looked in {directory}): "
                              f"{type(error).__name__}: {error}; {fix}")
    finally:
        socket.setdefaulttimeout(previous_timeout)
    network = network.to(device).eval()
    network.requires_grad_(False)
    return Backbone(network, None)


def resolve_lpips(device: torch.device, download: bool, trunk: str = "alex") -> Backbone:
    """Spatial LPIPS v0.1 with an ImageNet trunk (LPIPS_TRUNKS); its linear layers ship inside the lpips package."""
    return _resolve(f"LPIPS ({trunk})", LPIPS_TRUNKS[trunk], download,
                    lambda: lpips.LPIPS(net=trunk, spatial=True, verbose=False), device)


class InceptionFeatures(torch.nn.Module):
    """[-1, 1] images -> (B, D) pool features, fed the way pytorch-fid feeds them.

    pytorch-fid's InceptionV3 takes [0, 1] images, resizes them to 299 x 299 and scales
    them to [-1, 1] itself (resize_input, normalize_input): the standard FID pipeline.
    """

    def __init__(self, inception: torch.nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = ((images.float() + 1) / 2).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
        return self.inception(unit)[0].flatten(1)  # (B, D, 1, 1) -> (B, D)


def resolve_fid(device: torch.device, download: bool) -> Backbone:
    """pytorch-fid's InceptionV3 (FID weights, pool3: 2048-d features)."""
    def build() -> torch.nn.Module:
        block = InceptionV3.BLOCK_INDEX_BY_DIM[2048]
        return InceptionFeatures(InceptionV3([block], resize_input=True, normalize_input=True))

    return _resolve("FID", INCEPTION_FILE, download, build, device)


def _device_of(network: torch.nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def lpips_map(network: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The spatial LPIPS map (B, 1, H, W) at the input size, on pred's device."""
    with torch.no_grad():
        device = _device_of(network)
        dist = network(pred.to(device, torch.float32), target.to(device, torch.float32)).float()  # (B, 1, h, w)
        if dist.shape[-2:] != pred.shape[-2:]:
            dist = F.interpolate(dist, size=pred.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, H, W)
    return dist.to(pred.device)


def map_mean(dist: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean of a (B, 1, H, W) map over the mask (NaN when an image has no masked pixel), or over all of it."""
    if mask is None:
        return dist.flatten(1).mean(1)
    weight = mask.to(dist.device).float()  # (B, 1, H, W)
    count = weight.flatten(1).sum(1)  # (B,)
    total = (dist * weight).flatten(1).sum(1)  # (B,)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)


def lpips_distance(network: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image LPIPS, the spatial map averaged over the mask (NaN when an image has no masked pixel)."""
    return map_mean(lpips_map(network, pred, target), mask)


class FeatureStats:
    """Accumulates (B, D) features batch by batch; the mean and covariance FID compares."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def add(self, network: torch.nn.Module, images: torch.Tensor) -> None:
        device = _device_of(network)
        with torch.no_grad():
            features = network(images.to(device, torch.float32))  # (B, D)
        if features.ndim != 2:
            raise ValueError(f"feature network must return (B, D), got {tuple(features.shape)}")
        self.batches.append(features.float().cpu().numpy())

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) in float64; the covariance needs at least 2 images."""
        if len(self) < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {len(self)}")
        features = np.concatenate(self.batches).astype(np.float64)  # (N, D)
        return features.mean(0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; rounding's small negative eigenvalues clipped to 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), by symmetric eigendecompositions.

    Tr((S1 S2)^(1/2)) equals the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), which is symmetric PSD: real arithmetic throughout, so no
    imaginary parts to discard (scipy's sqrtm of the non-symmetric S1 S2 produces them),
    singular covariances (fewer images than dimensions) need no added eps, and at
    2048-d it is several times faster than sqrtm.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"moment shapes differ: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(eigenvalues.clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def real_moments(network: torch.nn.Module, images_batches: Iterable[torch.Tensor],
                 cache_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """FID moments of the real images, computed once and cached as .npz at `cache_file`.

    The caller keys the file name on the val set and the backbone. An unreadable or
    malformed cache (killed write of an older version, disk error) is recomputed.
    """
    cache_file = Path(cache_file)
    if cache_file.is_file():
        try:
            with np.load(cache_file) as cached:
                mu, sigma = cached["mu"], cached["sigma"]
            if mu.ndim == 1 and sigma.shape == mu.shape * 2:
                return mu, sigma
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    stats = FeatureStats()
    for images in images_batches:
        stats.add(network, images)
    mu, sigma = stats.moments()
    with atomic_file(cache_file) as tmp, open(tmp, "wb") as fh:  # a file object: savez would append ".npz" to a name
        np.savez(fh, mu=mu, sigma=sigma)
    return mu, sigma
