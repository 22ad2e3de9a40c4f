import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskgit_inpaint import masks

TOKENS = dict(f=4, token_ratio=0.3)  # what random_tokens needs; the other kinds take no notice


@pytest.mark.parametrize("kind", masks.KINDS)
@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_kind_is_deterministic_and_within_its_area_bounds(kind, size):
    m = masks.make(kind, 40, size, seed=3, **TOKENS)
    assert m.shape == (40, 1, size, size) and m.dtype == torch.bool
    assert torch.equal(m, masks.make(kind, 40, size, seed=3, **TOKENS))
    area = m.float().mean((1, 2, 3))  # (n,) fraction missing per image
    assert (area > 0).all(), "every image must have a hole"
    tokens = (size // 4) ** 2
    fixed = {"center": 0.25, "outpaint": 0.5, "random_tokens": round(0.3 * tokens) / tokens}
    if kind in fixed:
        assert torch.allclose(area, torch.full_like(area, fixed[kind]))
    else:
        assert (area <= masks.MAX_STROKE_AREA).all()
    if kind not in ("center", "outpaint"):
        assert len({tuple(a) for a in m.flatten(1).tolist()}) == 40, "each image gets its own hole"
        assert not torch.equal(m, masks.make(kind, 40, size, seed=4, **TOKENS)), "the seed drives the holes"


def test_outpaint_hides_exactly_the_right_half():
    m = masks.make("outpaint", 1, 64, seed=0)[0, 0]
    assert m[:, 32:].all() and not m[:, :32].any()


@pytest.mark.parametrize("kind", masks.KINDS)
def test_an_image_mask_depends_on_its_index_not_on_how_many_are_made(kind):
    assert torch.equal(masks.make(kind, 5, 64, seed=1, **TOKENS), masks.make(kind, 12, 64, seed=1, **TOKENS)[:5])


def test_stroke_widths_grow_from_thin_to_thick():
    # Erosion by a 5x5 window keeps only the cores of strokes wider than 4 pixels.
    def core(kind):
        m = masks.make(kind, 60, 256, seed=0).float()
        return (-torch.nn.functional.max_pool2d(-m, 5, 1, 2)).mean() / m.mean()

    assert core("thin") < core("medium") < core("thick")


def _is_boxes(mask: np.ndarray, side: int) -> bool:
    """Whether `mask` is a union of axis-aligned rectangles with both sides >= `side` (odd).

    Opening by a side x side square keeps exactly the pixels covered by such squares inside the mask,
    so it leaves a union of such rectangles unchanged and trims the round ends of every brush stroke.
    """
    m = mask.astype(np.uint8)
    return np.array_equal(cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((side, side), np.uint8)), m)


def test_box_generator_draws_rectangles_inside_the_margin():
    style = masks.FREE_FORM["thick"].boxes  # 1-3 boxes of 30-150 px, 10 px from every edge, at 256 px
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = masks.boxes(style, 256, rng)
        assert m.any() and _is_boxes(m, 29)
        assert not (m[:10].any() or m[-10:].any() or m[:, :10].any() or m[:, -10:].any())
        assert m.sum() <= 3 * 150 * 150


@pytest.mark.parametrize(("kind", "side", "share"), [("thin", 9, (0.0, 0.0)), ("medium", 9, (0.15, 0.32)), ("thick", 29, (0.25, 0.45))])
def test_medium_and_thick_masks_are_boxes_as_often_as_lamas(kind, side, share):
    # LaMa draws boxes instead of strokes in 0.3 / 1.3 of masks; after dropping masks over half the
    # image (thick strokes: about 45% of them, boxes hardly ever) about 23% of medium, 35% of thick.
    found = np.mean([_is_boxes(m, side) for m in masks.make(kind, 300, 256, seed=0)[:, 0].numpy()])
    assert share[0] <= found <= share[1]


@pytest.mark.parametrize(("ratio", "count"), [(0.3, 19), (0.001, 1), (1.0, 64)])
def test_random_tokens_hide_exactly_the_chosen_tokens(ratio, count):
    pixel = masks.make("random_tokens", 30, 32, seed=2, f=4, token_ratio=ratio)  # 8 x 8 tokens
    token = masks.to_token_mask(pixel, 4)  # (30, 64)
    assert (token.sum(1) == count).all(), "round(ratio * tokens), at least one"
    # Whole patches only: every 4 x 4 patch is entirely missing or entirely known.
    assert torch.equal(F.max_pool2d(pixel.float(), 4), -F.max_pool2d(-pixel.float(), 4))


def test_random_tokens_are_uniform_over_positions():
    token = masks.to_token_mask(masks.make("random_tokens", 2000, 32, seed=0, f=4, token_ratio=0.25), 4)  # (2000, 64)
    hits = token.float().mean(0)  # (64,) how often each position is hidden
    assert (hits - 0.25).abs().max() < 0.05  # binomial sd ~0.01


@pytest.mark.parametrize(("size", "args", "message"), [
    (32, dict(f=4), "token_ratio"),
    (32, dict(token_ratio=0.3), "f \\(the tokenizer"),
    (30, dict(f=4, token_ratio=0.3), "not divisible"),
    (32, dict(f=4, token_ratio=0.0), "token_ratio must lie in"),
])
def test_random_tokens_name_what_they_miss(size, args, message):
    with pytest.raises(ValueError, match=message):
        masks.make("random_tokens", 1, size, seed=0, **args)


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="outpaint"):
        masks.make("donut", 1, 32, seed=0)


def test_area_buckets_hold_their_lower_edge_as_lamas_evaluator():
    # 10 x 10 images: each missing pixel is 1% of the image.
    hidden = np.array([0, 9, 10, 55, 99, 100])
    assert masks.area_buckets(hidden, 100).tolist() == ["0-10%", "0-10%", "10-20%", "50-60%", "90-100%", "90-100%"]
    assert masks.area_buckets(hidden, 100, width=0.05).tolist() == ["0-5%", "5-10%", "10-15%", "55-60%", "95-100%", "95-100%"]
    center = masks.center_box(2, 64)
    assert masks.area_buckets(center.flatten(1).sum(1).numpy(), 64 * 64).tolist() == ["20-30%"] * 2


def test_area_buckets_need_a_width_that_divides_one():
    with pytest.raises(ValueError, match="whole buckets"):
        masks.area_buckets(np.array([16]), 64, width=0.3)


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
