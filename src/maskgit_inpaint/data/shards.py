"""WebDataset shards: write them from a Places365-layout folder, read them back for training.

A sample is `__key__`, `jpg` or `png` (RGB, image_size x image_size) and `cls`.
Images that cannot be decoded are rejected and listed in the manifest with the
reason; they never end the run.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from maskgit_inpaint.data import places365
from maskgit_inpaint.io import read_json, sha256_file

MANIFEST = "manifest.json"
ORIENTATION = 0x0112  # EXIF tag: how the camera was held
SPLITS = ("train", "val")


class RejectedImage(ValueError):
    """An input image that cannot be used; the message is the reason."""


def fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and center-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16/32-bit gray scaled to 8 bits, the rest by PIL's conversion."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit PNGs, 32-bit TIFFs: plain conversion would clip
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def prepare_image(path: Path, size: int, min_side: int = 1) -> tuple[bytes, str]:
    """Image file -> (encoded bytes, extension) of an RGB size x size image.

    A JPEG already upright, RGB and at the right size passes through byte for byte
    (no re-encoding loss); anything else is turned upright (EXIF orientation),
    converted to RGB (`to_rgb`), fitted to size x size and stored as lossless PNG.
    Images whose shorter side is below `min_side` are rejected rather than blown up.
    """
    try:
        raw = path.read_bytes()
        if not raw:
            raise RejectedImage("empty file (0 bytes)")
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if min(img.size) < min_side:
                raise RejectedImage(f"too small: {img.width}x{img.height}, shorter side under data.min_side ({min_side})")
            upright = img.getexif().get(ORIENTATION, 1) == 1
            if img.format == "JPEG" and img.mode == "RGB" and img.size == (size, size) and upright:
                return raw, "jpg"
            img = to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError as err:
        raise RejectedImage("file listed but missing") from err
    except UnidentifiedImageError as err:
        raise RejectedImage("cannot decode: not an image format PIL reads") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RejectedImage(f"cannot decode: {err}") from err
    buffer = io.BytesIO()
    fit(img, size).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def write_split(entries: list[places365.Entry], out_dir: Path, split: str, image_size: int, max_count: int, min_shards: int,
                min_side: int) -> dict:
    """Write one split's shards into out_dir; returns its manifest section."""
    per_shard = max(1, min(max_count, math.ceil(len(entries) / min_shards)))
    rejected = []
    written = 0
    pattern = str(out_dir / f"{split}-%06d.tar")
    # mtime=0: byte-identical tars from identical inputs, so DVC sees an unchanged out after a rerun.
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0, mtime=0) as sink:
        for entry in tqdm(entries, desc=f"shard {split}", unit="img", leave=False):
            try:
                data, ext = prepare_image(entry.path, image_size, min_side)
            except RejectedImage as err:
                rejected.append({"path": entry.relative, "reason": str(err)})
                continue
            sink.write({"__key__": entry.key, ext: data, "cls": entry.label})
            written += 1
    shards = sorted(out_dir.glob(f"{split}-*.tar"))
    return {
        "count": written,
        "rejected": rejected,
        "shards": [{"name": p.name, "sha256": sha256_file(p)} for p in shards],
    }


def load_manifest(shards_dir: Path | str) -> dict:
    return read_json(Path(shards_dir) / MANIFEST, made_by="shard")


def shard_urls(shards_dir: Path | str, split: str) -> list[str]:
    manifest = load_manifest(shards_dir)
    urls = [str(Path(shards_dir) / s["name"]) for s in manifest["splits"][split]["shards"]]
    if not urls:
        raise FileNotFoundError(f"{shards_dir}/{MANIFEST}: split {split!r} has no shards; check data.source and rerun `dvc repro shard`")
    return urls


def _to_tensor(sample: dict) -> dict:
    img = sample.get("jpg", sample.get("png"))
    sample["image"] = img * 2 - 1  # (3, H, W) in [-1, 1]
    return sample


def dataset(urls: list[str], shuffle_seed: int | None) -> wds.WebDataset:
    """Decoded samples in shard order, or shuffled (shards and a buffer) from a seed."""
    shuffled = shuffle_seed is not None
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffled else False, seed=shuffle_seed, empty_check=False)
    if shuffled:
        ds = ds.shuffle(1000, seed=shuffle_seed)
    return ds.decode("torchrgb").map(_to_tensor)


def train_batches(urls: list[str], batch_size: int, seed: int, num_workers: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled batches (B, 3, H, W) in [-1, 1]; epoch e reshuffles with seed + e.

    The stream depends only on (urls, batch_size, seed, workers): `skip` drops its first
    batches, so a resumed run continues with the batch an uninterrupted one would see next.
    """
    workers = min(num_workers, len(urls))
    epoch = produced = 0
    while True:
        ds = dataset(urls, shuffle_seed=seed + epoch).to_tuple("image").batched(batch_size, partial=False)
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
        yielded = False
        for (images,) in loader:
            yielded = True
            produced += 1
            if produced > skip:
                yield images
        if not yielded:
            raise ValueError(f"no full batch of {batch_size} in {len(urls)} shard(s); lower the batch size or add images")
        epoch += 1


def iterate_split(urls: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Every image of a split in shard order, in batches: ((B, 3, H, W) in [-1, 1], keys)."""
    for imgs, keys in dataset(urls, shuffle_seed=None).to_tuple("image", "__key__").batched(batch_size):
        yield imgs, list(keys)


def load_split(urls: list[str], limit: int | None = None, batch_size: int = 256) -> tuple[torch.Tensor, list[str]]:
    """The first `limit` images of a split, in shard order: (N, 3, H, W) in [-1, 1], keys."""
    images, keys = [], []
    for imgs, ks in iterate_split(urls, batch_size):
        images.append(imgs)
        keys.extend(ks)
        if limit is not None and len(keys) >= limit:
            break
    if not images:
        raise ValueError(f"no images in {urls}")
    return torch.cat(images)[:limit], keys[:limit]


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 for saving and OpenCV."""
    return ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
