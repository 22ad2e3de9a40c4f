"""WebDataset shards read back for training and evaluation (data/sharding.py writes them).

A sample is `__key__`, `jpg` or `png` (RGB, image_size x image_size) and `cls`.
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

from maskgit_inpaint.data.places365 import SPLITS  # noqa: F401  (stages name the splits through this module)
from maskgit_inpaint.io import read_json, sha256_file

MANIFEST = "manifest.json"
SHUFFLE_BUFFER = 1000  # samples mixed across shards before batching


def load_manifest(shards_dir: Path | str) -> dict:
    return read_json(Path(shards_dir) / MANIFEST, made_by="shard")


def shard_urls(shards_dir: Path | str, split: str) -> list[str]:
    manifest = load_manifest(shards_dir)
    urls = [str(Path(shards_dir) / s["name"]) for s in manifest["splits"][split]["shards"]]
    if not urls:
        raise FileNotFoundError(f"{shards_dir}/{MANIFEST}: split {split!r} has no shards; check data.source and rerun `dvc repro shard`")
    return urls


def decode_sample(sample: dict) -> dict:
    """Raw shard sample -> key, image (3, H, W) in [-1, 1], class index."""
    ext = "jpg" if "jpg" in sample else "png"
    with Image.open(io.BytesIO(sample[ext])) as img:
        pixels = np.array(img.convert("RGB"))  # (H, W, 3) uint8
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    return {"__key__": sample["__key__"], "image": image, "cls": int(sample["cls"])}


def dataset(urls: list[str], shuffle_seed: int | None) -> wds.WebDataset:
    """Decoded samples in shard order, or shuffled (shards and a buffer) from a seed.

    Shards are split between DDP processes (by node) and then between loader workers,
    so every process and worker reads a disjoint set of shards.
    """
    shuffled = shuffle_seed is not None
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffled else False, seed=shuffle_seed, empty_check=False,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
    if shuffled:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)
    return ds.map(decode_sample)


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
