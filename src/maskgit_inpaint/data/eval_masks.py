"""The evaluation masks of a profile: written once (stage eval_masks), read by every grid run and by other tools.

Each val image scored gets one mask per kind, as LaMa keeps its evaluation masks: an
8-bit PNG, 255 where the image is missing, under <dir>/<kind>/<val key>.png. Beside them
masks.json (MasksMeta) says how they were made, which val images they belong to, each
image's hole area (the grid's area buckets read it) and a digest per kind (the grid's
cache key). Generating them again from the same seed gives the same files; keeping them
as a DVC out means every run, and any other tool pointed at the folder, scores the same holes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskgit_inpaint import masks
from maskgit_inpaint.data.records import StoredRecord

META = "masks.json"


class MasksMeta(StoredRecord):
    """How a masks folder was made and what it holds."""

    kinds: list[str]  # one sub-folder each
    seed: int
    image_size: int  # masks are image_size x image_size
    downsample: int  # f of the tokenizer (random_tokens hides whole f x f patches)
    random_token_ratio: float
    keys: list[str]  # the val images they belong to, in shard order (the grid's first num_images)
    hidden: dict[str, list[int]]  # kind -> missing pixels of each image (area buckets count whole pixels)
    sha256: dict[str, str]  # kind -> digest of its masks (packed bits, in key order)


def _digest(pixel: torch.Tensor) -> str:
    return hashlib.sha256(np.packbits(pixel.numpy().astype(bool)).tobytes()).hexdigest()


def write(out: Path, *, kinds: tuple[str, ...], keys: list[str], image_size: int, seed: int, downsample: int,
          random_token_ratio: float) -> MasksMeta:
    """Generate every kind's masks for the images `keys` into the empty folder `out`."""
    hidden, digests = {}, {}
    for kind in kinds:
        pixel = masks.make(kind, len(keys), image_size, seed, f=downsample, token_ratio=random_token_ratio)  # (N, 1, H, W)
        (out / kind).mkdir(parents=True)
        for key, hole in zip(keys, pixel[:, 0].numpy()):
            Image.fromarray(hole.astype(np.uint8) * 255).save(out / kind / f"{key}.png", optimize=True)
        hidden[kind] = pixel.flatten(1).sum(1).tolist()
        digests[kind] = _digest(pixel)
    meta = MasksMeta(kinds=list(kinds), seed=seed, image_size=image_size, downsample=downsample,
                     random_token_ratio=random_token_ratio, keys=keys, hidden=hidden, sha256=digests)
    meta.write(out / META)
    return meta


def load_meta(masks_dir: Path | str) -> MasksMeta:
    return MasksMeta.read(Path(masks_dir) / META, made_by="eval_masks")


def check(masks_dir: Path | str, *, kinds: tuple[str, ...], seed: int, num_images: int, random_token_ratio: float) -> MasksMeta:
    """The folder's record, if it was made for these eval params; else a ValueError that says what differs and the fix."""
    meta = load_meta(masks_dir)
    differ = [f"{name} {made!r} (params: {wanted!r})" for name, made, wanted in
              (("seed", meta.seed, seed), ("random_token_ratio", meta.random_token_ratio, random_token_ratio)) if made != wanted]
    if missing := [k for k in kinds if k not in meta.kinds]:
        differ.append(f"no {missing} masks")
    if len(meta.keys) < num_images:
        differ.append(f"{len(meta.keys)} images (params: num_images {num_images})")
    if differ:
        raise ValueError(f"{Path(masks_dir) / META}: made for other eval params: {'; '.join(differ)}; run `dvc repro eval_masks`")
    return meta


def area_buckets(masks_dir: Path | str, kind: str, n_images: int) -> np.ndarray:
    """(n_images,) the hole-area bucket ("0-10%", ...) of the first images' `kind` masks, from the pixel counts masks.json holds."""
    meta = load_meta(masks_dir)
    return masks.area_buckets(np.array(meta.hidden[kind][:n_images]), meta.image_size ** 2)


def load(masks_dir: Path | str, kind: str, keys: list[str]) -> torch.Tensor:
    """The masks of `kind` for the val images `keys`: (N, 1, H, W) bool, True = missing; checked against masks.json."""
    masks_dir = Path(masks_dir)
    meta = load_meta(masks_dir)
    if kind not in meta.kinds:
        raise ValueError(f"{masks_dir}/{META}: no {kind!r} masks (it holds {meta.kinds}); add it to eval.masks and run `dvc repro eval_masks`")
    if meta.keys[: len(keys)] != keys:
        raise ValueError(f"{masks_dir}/{META}: made for other val images than the grid scores; run `dvc repro eval_masks`")
    holes = []
    for key in keys:
        path = masks_dir / kind / f"{key}.png"
        with Image.open(path) as image:
            hole = np.asarray(image.convert("L")) > 127
        if hole.shape != (meta.image_size, meta.image_size):
            raise ValueError(f"{path}: {hole.shape[1]}x{hole.shape[0]} px, the masks are {meta.image_size} px; run `dvc repro eval_masks`")
        holes.append(hole)
    pixel = torch.from_numpy(np.stack(holes))[:, None]  # (N, 1, H, W)
    if len(keys) == len(meta.keys) and _digest(pixel) != meta.sha256[kind]:
        raise ValueError(f"{masks_dir}/{kind}: the PNGs differ from what {META} records; run `dvc repro -f eval_masks`")
    return pixel
