import socket
import warnings

import lpips
import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from maskgit_inpaint import masks
from maskgit_inpaint.perceptual import (
    ALEXNET_FILE,
    INCEPTION_FILE,
    Backbone,
    FeatureStats,
    InceptionFeatures,
    frechet_distance,
    hub_checkpoints,
    lpips_distance,
    real_moments,
    resolve_fid,
    resolve_lpips,
)

CPU = torch.device("cpu")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A fresh, empty torch hub; DNS lookups and connections are recorded and refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise socket.gaierror(socket.EAI_NONAME, "offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="module")
def random_lpips():
    """Real lpips linear layers on a random AlexNet trunk: exercises code paths, never a reportable LPIPS."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation
        network = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, spatial=True, verbose=False)
    return network.eval().requires_grad_(False)


def _images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_backbone_holds_exactly_one_of_network_and_reason():
    assert Backbone(torch.nn.Identity(), None).available
    assert not Backbone(None, "missing").available
    for bad in ((None, None), (torch.nn.Identity(), "missing")):
        with pytest.raises(ValueError):
            Backbone(*bad)


@pytest.mark.parametrize("resolve, file_name", [(resolve_lpips, ALEXNET_FILE), (resolve_fid, INCEPTION_FILE)])
def test_missing_weights_without_download_are_unavailable_with_the_fix(empty_hub, resolve, file_name):
    backbone = resolve(CPU, download=False)
    assert not backbone.available and backbone.network is None
    assert file_name in backbone.reason and str(hub_checkpoints()) in backbone.reason
    assert "download_weights: true" in backbone.reason
    assert empty_hub == []  # no network attempt


@pytest.mark.parametrize("resolve, file_name", [(resolve_lpips, ALEXNET_FILE), (resolve_fid, INCEPTION_FILE)])
def test_failed_download_is_unavailable_and_restores_the_socket_timeout(empty_hub, resolve, file_name):
    before = socket.getdefaulttimeout()
    backbone = resolve(CPU, download=True)
    assert not backbone.available
    assert file_name in backbone.reason and str(hub_checkpoints()) in backbone.reason
    assert empty_hub  # it did try, and failed like an offline machine
    assert socket.getdefaulttimeout() == before
    assert not (hub_checkpoints() / file_name).exists()


@pytest.mark.parametrize("size", [32, 64])
def test_lpips_is_zero_for_identical_images_and_masked_mean_matches_the_map(random_lpips, size):
    pred, target = _images(4, size, 0), _images(4, size, 1)
    mask = masks.center_box(4, size)
    mask[3] = False  # an image with no missing pixel
    assert torch.allclose(lpips_distance(random_lpips, target, target), torch.zeros(4), atol=1e-7)
    whole, masked = lpips_distance(random_lpips, pred, target), lpips_distance(random_lpips, pred, target, mask)
    assert whole.shape == masked.shape == (4,) and whole.dtype == torch.float32
    spatial = random_lpips(pred, target)  # (B, 1, H, W)
    assert torch.allclose(whole, spatial.mean(dim=(1, 2, 3)))
    expected = torch.stack([spatial[i][mask[i]].mean() for i in range(3)])
    assert torch.allclose(masked[:3], expected)
    assert (masked[:3] > 0).all() and torch.isnan(masked[3])


def test_lpips_upsamples_a_coarse_map_to_the_mask():
    class Coarse(torch.nn.Module):
        """A (B, 1, 4, 4) map constant per image: any masked mean must give back that constant."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, pred, target):
            per_image = (pred - target).abs().mean(dim=(1, 2, 3))  # (B,)
            return (self.scale * per_image)[:, None, None, None].expand(-1, 1, 4, 4)

    pred, target = _images(2, 32, 0), _images(2, 32, 1)
    expected = (pred - target).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(lpips_distance(Coarse(), pred, target, masks.center_box(2, 32)), expected)


def test_frechet_distance_matches_closed_forms_and_pytorch_fid():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=16)
    a = rng.normal(size=(16, 16))
    sigma = a @ a.T + np.eye(16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    few = rng.normal(size=(5, 16))  # 5 samples in 16 dims: a singular covariance
    assert abs(frechet_distance(few.mean(0), np.cov(few, rowvar=False), few.mean(0), np.cov(few, rowvar=False))) < 1e-6

    mu2 = rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 2, size=16), rng.uniform(0.1, 2, size=16)
    closed = ((mu - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-10)

    b = rng.normal(size=(16, 16))
    sigma2 = b @ b.T + 0.1 * np.eye(16)
    reference = calculate_frechet_distance(mu, sigma, mu2, sigma2)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(reference, rel=1e-8)
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu2[:8], sigma2[:8, :8])


class SmallFeatures(torch.nn.Module):
    """(B, 3, H, W) -> (B, 8), counting its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return self.conv(images).relu().mean(dim=(2, 3))


def test_feature_stats_accumulates_batches():
    network, images = SmallFeatures(), _images(10, 16, 0)
    stats = FeatureStats()
    with pytest.raises(ValueError, match="at least 2"):
        stats.moments()
    for batch in images.split(4):
        stats.add(network, batch)
    mu, sigma = stats.moments()
    with torch.no_grad():
        features = network(images).double().numpy()  # (10, 8)
    assert len(stats) == 10 and mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-9)


def test_inception_features_feed_unit_range_and_flatten():
    class PoolOnly(torch.nn.Module):
        """Stands in for pytorch-fid's InceptionV3: [0, 1] images -> [(B, C, 1, 1)]."""

        def forward(self, unit):
            return [unit.amax(dim=(2, 3), keepdim=True), unit.amin(dim=(2, 3), keepdim=True)]

    images = torch.full((2, 3, 8, 8), -1.0)
    images[:, :, 0, 0] = 1.0
    features = InceptionFeatures(PoolOnly())(images)
    assert features.shape == (2, 3)
    assert torch.equal(features, torch.ones(2, 3))  # 1 -> 1 (max); the pool3 output is the first


def test_real_moments_are_cached_and_a_corrupt_cache_is_recomputed(tmp_path):
    network, images = SmallFeatures(), _images(6, 16, 0)
    cache = tmp_path / "stats" / "val-abc123-inception.npz"
    mu, sigma = real_moments(network, images.split(3), cache)
    assert network.calls == 2 and cache.is_file()
    assert not [p for p in cache.parent.iterdir() if p != cache]  # no temp file left behind

    cached_mu, cached_sigma = real_moments(network, images.split(3), cache)
    assert network.calls == 2
    np.testing.assert_array_equal(cached_mu, mu)
    np.testing.assert_array_equal(cached_sigma, sigma)

    cache.write_bytes(b"not an npz")
    again_mu, _ = real_moments(network, images.split(3), cache)
    assert network.calls == 4
    np.testing.assert_allclose(again_mu, mu)
    real_moments(network, images.split(3), cache)
    assert network.calls == 4  # the rewritten cache is valid
