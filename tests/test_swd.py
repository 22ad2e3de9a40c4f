import torch

from maskgit_inpaint import masks
from maskgit_inpaint.swd import PatchSets, laplacian_pyramid


def _scenes(n, seed):
    """Smooth gradients with a bright square: structured images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(-1, 1, 32)[None, None, :, None].expand(n, 3, 32, 32).clone()
    y = y * torch.rand(n, 3, 1, 1, generator=g)
    for i in range(n):
        r, c = torch.randint(4, 20, (2,), generator=g).tolist()
        y[i, :, r:r + 8, c:c + 8] = 0.9
    return y


def _swd(fake, real, mask=None):
    sets = PatchSets(levels=3, patch=7, per_image=64, seed=0)
    sets.add(fake, real, mask)
    return sets.distance()


def test_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32)
    levels = laplacian_pyramid(x, 3)
    assert [tuple(l.shape[-2:]) for l in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = torch.nn.functional.interpolate(rebuilt, scale_factor=2, mode="bilinear", align_corners=False) + band
    assert torch.allclose(rebuilt, x, atol=1e-5)


def test_swd_is_zero_for_identical_sets_and_ranks_realism():
    real = _scenes(16, 0)
    other_real = _scenes(16, 1)
    blurred = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2)
    noise = torch.rand_like(real) * 2 - 1
    assert _swd(real, real) == 0.0
    assert _swd(other_real, real) < _swd(blurred, real) < _swd(noise, real)


def test_masked_swd_looks_at_the_hole():
    real = torch.nn.functional.interpolate(_scenes(8, 0), scale_factor=2, mode="bilinear")  # 64 x 64
    hole = masks.center_box(8, 64)
    noise = torch.rand_like(real) * 2 - 1
    damaged_inside, damaged_outside = torch.where(hole, noise, real), torch.where(hole, real, noise)
    # Patches centred in the hole also see a few pixels of context (the seam), so outside damage counts, but less.
    assert _swd(damaged_outside, real, hole) < _swd(damaged_inside, real, hole)
    assert _swd(damaged_outside, real, hole) < _swd(damaged_outside, real)
