import pytest
import torch

from maskgit_inpaint import masks


@pytest.mark.parametrize("kind", masks.KINDS)
@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_kind_is_deterministic_and_within_its_area_bounds(kind, size):
    m = masks.make(kind, 40, size, seed=3)
    assert m.shape == (40, 1, size, size) and m.dtype == torch.bool
    assert torch.equal(m, masks.make(kind, 40, size, seed=3))
    area = m.float().mean((1, 2, 3))  # (n,) fraction missing per image
    assert (area > 0).all(), "every image must have a hole"
    if kind in masks.STROKES:
        assert (area <= masks.MAX_STROKE_AREA).all()
        assert len({tuple(a) for a in m.flatten(1).tolist()}) == 40, "each image gets its own strokes"
        assert not torch.equal(m, masks.make(kind, 40, size, seed=4)), "the seed drives the strokes"
    else:
        assert torch.allclose(area, torch.full_like(area, 0.25 if kind == "center" else 0.5))


def test_outpaint_hides_exactly_the_right_half():
    m = masks.make("outpaint", 1, 64, seed=0)[0, 0]
    assert m[:, 32:].all() and not m[:, :32].any()


def test_an_image_mask_depends_on_its_index_not_on_how_many_are_made():
    assert torch.equal(masks.make("thin", 5, 64, seed=1), masks.make("thin", 12, 64, seed=1)[:5])


def test_stroke_widths_grow_from_thin_to_thick():
    # Erosion by a 5x5 window keeps only the cores of strokes wider than 4 pixels.
    def core(kind):
        m = masks.make(kind, 60, 256, seed=0).float()
        return (-torch.nn.functional.max_pool2d(-m, 5, 1, 2)).mean() / m.mean()

    assert core("thin") < core("medium") < core("thick")


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="outpaint"):
        masks.make("donut", 1, 32, seed=0)
