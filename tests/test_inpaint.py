"""inpaint.py: the pure helpers (window, holes, recommended settings, image reading) and completion in every mode."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from maskgit_inpaint import config, inpaint
from maskgit_inpaint.data.images import to_rgb

from conftest import ROOT, write_tiny_params


@pytest.fixture(scope="module")
def eval_params(tmp_path_factory) -> config.EvalParams:
    return config.load(write_tiny_params(tmp_path_factory.mktemp("params") / "params.yaml")).eval


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour gradients plus sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    smooth = np.stack([200 * xx + 30, 180 * yy + 40, 120 + 60 * np.sin(6 * xx) * np.cos(4 * yy)], -1)
    noisy = smooth + np.random.default_rng(seed).normal(0, 6, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_the_window_is_a_square_of_twice_the_hole_centred_on_it_and_at_least_the_model_resolution():
    hole = np.zeros((2000, 3000), bool)
    hole[800:1100, 1200:1600] = True  # 400 wide, 300 high
    assert inpaint.window_around(hole, 64) == (1000, 550, 800, 800)
    small = np.zeros((2000, 3000), bool)
    small[100:105, 200:203] = True
    x, y, w, h = inpaint.window_around(small, 64)
    assert (w, h) == (64, 64) and x <= 200 and x + w >= 203 and y <= 100 and y + h >= 105


def test_the_window_stays_inside_the_image_and_always_holds_the_hole():
    rng = np.random.default_rng(0)
    for _ in range(200):
        H, W = rng.integers(5, 300, 2)
        hole = np.zeros((H, W), bool)
        y0, x0 = rng.integers(0, H), rng.integers(0, W)
        y1, x1 = rng.integers(y0 + 1, H + 1), rng.integers(x0 + 1, W + 1)
        hole[y0:y1, x0:x1] = True
        x, y, w, h = inpaint.window_around(hole, 32)
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H
        assert hole[y:y + h, x:x + w].sum() == hole.sum()
        side = max(32, round(inpaint.CONTEXT * max(x1 - x0, y1 - y0)))
        assert (w, h) == (min(W, side), min(H, side))


def test_a_picture_smaller_than_the_model_is_one_window():
    hole = np.zeros((10, 10), bool)
    hole[4:6, 4:6] = True
    assert inpaint.window_around(hole, 32) == (0, 0, 10, 10)


def test_a_box_hides_exactly_its_pixels_and_must_lie_inside_the_image():
    hole = inpaint.hole_from_box("3,2,4,5", (10, 8))
    assert hole.shape == (8, 10) and hole.sum() == 20 and hole[2:7, 3:7].all()
    assert np.array_equal(hole, inpaint.hole_from_box((3, 2, 4, 5), (10, 8)))
    for box in ("7,2,4,5", "-1,0,2,2", "0,0,0,3", "0,4,2,5"):
        with pytest.raises(inpaint.InpaintError, match="does not lie inside the 10x8 image"):
            inpaint.hole_from_box(box, (10, 8))
    for box in ("1,2,3", "a,b,c,d", "1.5,2,3,4"):
        with pytest.raises(inpaint.InpaintError, match="give four integers x,y,w,h"):
            inpaint.hole_from_box(box, (10, 8))


def test_a_mask_of_another_size_is_resized_onto_the_image():
    painted = np.zeros((10, 20), np.uint8)
    painted[:, :5] = 255  # the left quarter
    hole = inpaint.hole_from_mask(Image.fromarray(painted), (80, 30), "m.png")
    assert hole.shape == (30, 80) and hole[:, :20].all() and not hole[:, 20:].any()
    stroke = np.zeros((40, 40), np.uint8)
    stroke[:, 17] = 255  # one pixel wide
    shrunk = inpaint.hole_from_mask(Image.fromarray(stroke), (10, 10), "m.png")
    assert shrunk[:, 4].all() and shrunk.sum() == 10  # still there, one pixel wide
    disc = np.zeros((20, 20), np.uint8)
    disc[np.hypot(*np.mgrid[-9.5:10, -9.5:10]) < 8] = 255
    enlarged = inpaint.hole_from_mask(Image.fromarray(disc), (200, 200), "m.png")
    r = np.hypot(*np.mgrid[-99.5:100, -99.5:100])
    assert enlarged[r < 75].all() and not enlarged[r > 85].any()  # a disc again, not 10-pixel stairs


def test_a_mask_with_alpha_hides_only_light_opaque_paint():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:2, :, :] = 255  # white, opaque: fill
    rgba[2:4, :, :3] = 255  # white but transparent: keep
    rgba[4:, :, 3] = 255  # black, opaque: keep
    hole = inpaint.hole_from_mask(Image.fromarray(rgba, "RGBA"), (6, 6), "m.png")
    assert hole[:2].all() and not hole[2:].any()


def test_a_gray_mask_is_split_at_half_and_a_flat_gray_one_is_refused():
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (2, 1))  # 0 .. 240
    hole = inpaint.hole_from_mask(Image.fromarray(ramp), ramp.shape[::-1], "m.png")
    assert np.array_equal(hole, ramp >= 128)
    with pytest.raises(inpaint.InpaintError, match="one flat gray"):
        inpaint.hole_from_mask(Image.new("L", (4, 4), 90), (4, 4), "m.png")


def test_a_kind_is_drawn_at_the_model_resolution_and_stretched_over_the_picture():
    hole = inpaint.hole_of_kind("center", (90, 60), resolution=32, f=4, seed=0, token_ratio=0.3)
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    assert hole.shape == (60, 90) and abs(hole.mean() - 0.25) < 0.02
    assert abs((rows[0] + rows[-1]) / 2 - 29.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 44.5) <= 1


def test_recommended_settings_without_a_grid_are_the_params(eval_params):
    s = inpaint.recommended(None, "center", eval_params)
    assert (s.schedule, s.T, s.sweet_spot, s.seed) == (eval_params.schedules[0], max(eval_params.T), max(eval_params.T), eval_params.seed)
    assert s.chosen_by.startswith("params.yaml") and "no grid has run" in s.chosen_by


def test_recommended_settings_are_the_grid_pick_of_the_first_metric_in_pick_order(eval_params):
    summary = json.loads((ROOT / "metrics" / "eval_summary.json").read_text())  # the committed grid's real summary
    for kind, entry in summary["masks"].items():
        metric = next(m for m in inpaint.PICK_ORDER if m in entry["picks"])
        cell = entry["picks"][metric]["cell"]
        s = inpaint.recommended(summary, kind, eval_params)
        assert (s.schedule, s.T, s.sweet_spot, s.token_temperature) == (cell["schedule"], cell["T"], cell["sweet_spot"],
                                                                      cell["token_temperature"])
        assert metric in s.chosen_by and entry["picks"][metric]["name"] in s.chosen_by
    ranked = {"masks": {"center": {"picks": {m: {"cell": {"schedule": schedule, "T": 5, "sweet_spot": 3, "token_temperature": 1.0},
                                                  "name": m} for m, schedule in zip(("psnr_masked", "lpips_masked"), ("exp", "log"))}}}}
    assert inpaint.recommended(ranked, "center", eval_params).schedule == "log"  # lpips comes before psnr
    missing = inpaint.recommended(summary, "thin", eval_params)
    assert "the grid has no picks for mask kind thin" in missing.chosen_by and missing.T == max(eval_params.T)


def test_overrides_replace_one_field_each_and_are_checked(eval_params):
    base = inpaint.recommended(None, "center", eval_params)
    s = base.with_overrides(T=7, seed=11)
    assert (s.T, s.seed, s.schedule, s.sweet_spot) == (7, 11, base.schedule, base.sweet_spot)
    assert s.chosen_by == f"{base.chosen_by}; overridden: T=7, seed=11"
    assert base.with_overrides() is base
    for changes, message in ((dict(sweet_spot=base.T + 1), "sweet_spot"), (dict(T=0), "T=0"), (dict(schedule="zigzag"), "zigzag")):
        with pytest.raises(inpaint.InpaintError, match=message):
            base.with_overrides(**changes)


def test_unreadable_pictures_are_one_clear_error(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(_photo(64, 48)).save(jpeg, "JPEG")
    with pytest.raises(inpaint.InpaintError, match="cut.jpg: cannot decode as an image"):
        inpaint.open_image(jpeg.getvalue()[:len(jpeg.getvalue()) // 2], "cut.jpg")
    with pytest.raises(inpaint.InpaintError, match="empty file"):
        inpaint.open_image(b"", "zero.png")
    with pytest.raises(inpaint.InpaintError, match="no such file"):
        inpaint.read_image(tmp_path / "gone.png")
    with pytest.raises(inpaint.InpaintError, match="is a directory"):
        inpaint.read_image(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(inpaint.InpaintError, match="cannot read it"):
        inpaint.read_image(tmp_path / "file" / "inside.png")


def test_a_picture_is_read_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees clockwise
    jpeg = io.BytesIO()
    Image.fromarray(_photo(64, 48)).save(jpeg, "JPEG", exif=exif)
    assert inpaint.open_image(jpeg.getvalue(), "phone.jpg").size == (48, 64)


def test_the_training_note_says_plainly_what_the_models_know():
    note = inpaint.training_note(profile="embedded", source="embedded")
    assert "embedded sample" in note and "not photographs" in note and "data.source" in note
    assert "embedded sample" not in inpaint.training_note(profile="places365", source="data/places365")


@pytest.fixture(scope="module")
def inpainter(tiny_chain) -> inpaint.Inpainter:
    p = config.load(tiny_chain / "params.yaml")
    return inpaint.Inpainter.load(tiny_chain / p.paths.vqgan, tiny_chain / p.paths.transformer, precision=p.eval.precision)


@pytest.mark.parametrize("mode, kept", [("RGB", "RGB"), ("RGBA", "RGBA"), ("L", "L"), ("LA", "LA"), ("P", "RGB"), ("1", "L"),
                                        ("I;16", "L"), ("CMYK", "RGB")])
def test_completion_keeps_every_known_pixel_in_each_mode(inpainter, eval_params, mode, kept):
    rgb = Image.fromarray(_photo(70, 45))
    image = {"RGBA": lambda: Image.fromarray(np.dstack([_photo(70, 45), np.full((45, 70), 90, np.uint8)]), "RGBA"),
             "I;16": lambda: Image.fromarray(_photo(70, 45)[..., 0].astype(np.uint16) * 257)}.get(mode, lambda: rgb.convert(mode))()
    hole = inpaint.hole_from_box("20,10,15,12", image.size)
    settings = inpaint.recommended(None, "center", eval_params)
    done = inpainter.complete(image, hole, settings, keep_steps=True)
    assert done.image.size == image.size and done.image.mode == kept
    assert bool(done.notes) == (mode != kept)
    before = np.asarray(to_rgb(image).convert("L") if mode == "I;16" else image.convert(kept))  # the conversion the note names
    after = np.asarray(done.image)
    assert np.array_equal(after[~hole], before[~hole])
    assert sorted(done.steps) == list(range(1, settings.T + 1)) and done.steps[settings.sweet_spot] == done.image
    if kept in ("RGBA", "LA"):
        assert (after[hole][..., -1] == 255).all()  # completed pixels are opaque
    if mode in ("RGB", "RGBA"):
        assert (after[hole][..., :3] != before[hole][..., :3]).any(-1).mean() > 0.5


def test_an_empty_hole_returns_the_input_and_a_full_one_is_completed_from_nothing(inpainter, eval_params):
    image = Image.fromarray(_photo(40, 30))
    settings = inpaint.recommended(None, "thick", eval_params)
    empty = inpainter.complete(image, np.zeros((30, 40), bool), settings)
    assert empty.image == image and empty.hidden == 0 and "hides no pixel" in empty.notes[0]
    full = inpainter.complete(image, np.ones((30, 40), bool), settings)
    assert full.hidden == 1 and full.window == (0, 0, 40, 30) and "completed from nothing" in full.notes[0]
    assert full.image.size == image.size and (np.asarray(full.image) != np.asarray(image)).any(-1).mean() > 0.5
    box = inpaint.hole_from_box("5,5,10,10", image.size)
    assert inpainter.complete(image, box.astype(np.uint8), settings).image == inpainter.complete(image, box, settings).image
    with pytest.raises(inpaint.InpaintError, match="the hole is 4x3 but the image 40x30"):
        inpainter.complete(image, np.ones((3, 4), bool), settings)
