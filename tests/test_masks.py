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


def _grid(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "X" for c in row] for row in rows]).flatten()  # (h*w,)


def test_token_dilation_grows_by_whole_cells_with_corners_and_stops_at_the_border():
    before = _grid(["X....",
                    ".....",
                    "....X",
                    ".....",
                    "....."])
    # One cell: the 3x3 square around each masked cell (the diagonal (1, 1) too), cut at the border.
    one = _grid(["XX...",
                 "XX.XX",
                 "...XX",
                 "...XX",
                 "....."])
    two = _grid(["XXXXX",
                 "XXXXX",
                 "XXXXX",
                 "..XXX",
                 "..XXX"])
    batch = torch.stack([before, torch.zeros(25, dtype=torch.bool), torch.ones(25, dtype=torch.bool)])  # (3, 25)
    assert torch.equal(masks.dilate_token_mask(batch, 0), batch)
    assert torch.equal(masks.dilate_token_mask(batch, 1), torch.stack([one, batch[1], batch[2]]))
    assert torch.equal(masks.dilate_token_mask(batch, 2)[0], two)


def test_token_dilation_by_one_is_maskgits_editing_box():
    # MaskGIT_demo.ipynb edits bbox '128_64_256_288' (top, left, height, width) at 512 px, f = 16:
    # inference.py masks latent rows max(0, 128//16 - 1) = 7 .. 256//16 + 128//16 + 1 = 25 (exclusive)
    # and columns max(0, 64//16 - 1) = 3 .. 64//16 + 288//16 + 1 = 23, the token box rows 8..24, columns 4..22 grown by one.
    pixel = torch.zeros(1, 1, 512, 512, dtype=torch.bool)
    pixel[..., 128:128 + 256, 64:64 + 288] = True
    official = torch.zeros(1, 32, 32, dtype=torch.bool)
    official[:, 7:25, 3:23] = True
    assert torch.equal(masks.dilate_token_mask(masks.to_token_mask(pixel, 16), 1), official.flatten(1))


def test_token_dilation_refuses_bad_grids_and_cells():
    with pytest.raises(ValueError, match="square"):
        masks.dilate_token_mask(torch.zeros(1, 10, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match=">= 0"):
        masks.dilate_token_mask(torch.zeros(1, 16, dtype=torch.bool), -1)
