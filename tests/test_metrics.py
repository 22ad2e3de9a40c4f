import pytest
import torch

from maskgit_inpaint import evaluation, masks, metrics, runtime
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig


def test_psnr_known_values_and_mask():
    target = torch.zeros(2, 3, 16, 16)  # mid-grey in [-1, 1]
    pred = target.clone()
    pred[1] += 0.2  # 0.1 in [0, 1] units everywhere -> MSE 0.01 -> 20 dB
    assert metrics.psnr(pred, target).tolist() == pytest.approx([100.0, 20.0], abs=1e-3)
    hole = masks.center_box(2, 16)
    pred[0][hole[0].expand(3, -1, -1)] += 0.2  # error only inside the hole
    assert metrics.psnr(pred, target, hole)[0].item() == pytest.approx(20.0, abs=1e-3)
    assert metrics.psnr(pred, target)[0].item() == pytest.approx(20.0 + 10 * torch.log10(torch.tensor(4.0)).item(), abs=1e-3)


def test_ssim_is_one_for_identical_and_masked_ssim_sees_only_the_hole():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    assert metrics.ssim(target, target).item() == pytest.approx(1.0, abs=1e-5)
    hole = masks.center_box(1, 32)
    damaged = torch.where(hole, torch.zeros_like(target), target)
    assert metrics.ssim(damaged, target, hole).item() < 0.5 < metrics.ssim(damaged, target).item()


def test_composite_keeps_known_pixels_and_feathers_the_edge():
    original, generated = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    hole = masks.center_box(1, 16)
    out = evaluation.composite(original, generated, hole, feather=2)
    assert torch.all(out[hole.expand_as(out)] == 1)
    assert out[0, 0, 0, 0] == 0 and 0 < out[0, 0, 3, 8] < 1  # a corner is untouched; the ring next to the hole blends


def test_pixel_decode_in_cache_chunks_is_one_decode_of_the_batch():
    vqgan = VQGAN(VQGANConfig(resolution=32, ch_mult=(1, 2), n_embed=16, embed_dim=8, z_channels=32)).eval()
    count = runtime.CPU_CHUNK_BYTES // vqgan.config.decode_activation_bytes(32) + 3  # more than one chunk on a CPU
    ids = torch.randint(0, 16, (count, 16 * 16), generator=torch.Generator().manual_seed(0))
    images = evaluation.decode_pixels(vqgan, ids, runtime.precision("fp32", torch.device("cpu")))
    assert images.shape == (count, 3, 32, 32) and images.dtype == torch.float32
    assert torch.allclose(images, vqgan.decode_indices(ids.view(count, 16, 16)), atol=1e-5)


def test_telea_fills_a_smooth_gradient_and_keeps_known_pixels():
    ramp = torch.linspace(-0.8, 0.8, 32)[None, None, None, :].expand(2, 3, 32, 32).contiguous()
    hole = masks.center_box(2, 32)
    filled = evaluation.telea_fill(torch.where(hole, torch.ones_like(ramp), ramp), hole)
    assert torch.allclose(filled[~hole.expand_as(filled)], ramp[~hole.expand_as(ramp)], atol=1 / 127)
    flat = torch.where(hole, torch.zeros_like(ramp), ramp)  # the hole filled with the image's mean
    # Telea propagates the ramp into the hole: clearly better than a flat fill.
    assert (metrics.psnr(filled, ramp, hole) > metrics.psnr(flat, ramp, hole) + 3).all()
