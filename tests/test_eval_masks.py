"""The evaluation masks artifact: written once per profile, read back as the same holes, checked against the params."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskgit_inpaint import masks
from maskgit_inpaint.data import eval_masks

KEYS = [f"val_{i:04d}" for i in range(6)]
KINDS = ("center", "thick", "random_tokens")


@pytest.fixture
def folder(tmp_path):
    eval_masks.write(tmp_path / "masks", kinds=KINDS, keys=KEYS, image_size=32, seed=3, downsample=4, random_token_ratio=0.25)
    return tmp_path / "masks"


def test_the_files_hold_the_generated_holes_as_lama_keeps_masks(folder):
    for kind in KINDS:
        expected = masks.make(kind, len(KEYS), 32, 3, f=4, token_ratio=0.25)
        assert torch.equal(eval_masks.load(folder, kind, KEYS), expected)
        png = np.asarray(Image.open(folder / kind / f"{KEYS[0]}.png"))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}  # 255 = missing
    meta = eval_masks.load_meta(folder)
    assert meta.hidden["center"] == [16 * 16] * len(KEYS) and meta.keys == KEYS


def test_random_tokens_project_to_exactly_their_tokens(folder):
    pixel = eval_masks.load(folder, "random_tokens", KEYS)
    tokens = masks.to_token_mask(pixel, 4)  # (N, 64)
    assert (tokens.sum(1) == 16).all()  # 25% of 8 x 8
    assert torch.equal(pixel, tokens.view(-1, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_a_prefix_of_the_images_loads_and_other_images_do_not(folder):
    assert eval_masks.load(folder, "thick", KEYS[:4]).shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="other val images.*dvc repro eval_masks"):
        eval_masks.load(folder, "thick", ["someone_else"])


def test_an_edited_mask_file_is_caught(folder):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "center" / f"{KEYS[2]}.png")
    with pytest.raises(ValueError, match=r"center: the PNGs differ from what masks.json records; run `dvc repro -f eval_masks`"):
        eval_masks.load(folder, "center", KEYS)


@pytest.mark.parametrize("change, message", [
    ({"seed": 4}, r"seed 3 \(params: 4\)"),
    ({"random_token_ratio": 0.3}, r"random_token_ratio 0.25 \(params: 0.3\)"),
    ({"kinds": ("center", "outpaint")}, r"no \['outpaint'\] masks"),
    ({"num_images": 10}, r"6 images \(params: num_images 10\)"),
])
def test_masks_made_for_other_params_name_the_difference_and_the_fix(folder, change, message):
    wanted = {"kinds": KINDS, "seed": 3, "num_images": 6, "random_token_ratio": 0.25, **change}
    with pytest.raises(ValueError, match=message + r".*run `dvc repro eval_masks`"):
        eval_masks.check(folder, **wanted)
    assert eval_masks.check(folder, kinds=KINDS, seed=3, num_images=4, random_token_ratio=0.25).seed == 3
