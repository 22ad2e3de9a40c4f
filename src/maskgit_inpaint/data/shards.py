"""WebDataset shards read back for training and evaluation (data/sharding.py writes them).

A sample is `__key__`, `jpg` or `png` (RGB, image_size x image_size) and `cls`.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torchvision.io import ImageReadMode, decode_image

from maskgit_inpaint.data.sharding import MANIFEST
from maskgit_inpaint.io import read_json

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

SHUFFLE_BUFFER = 1000  # samples mixed across shards before batching
BLOCK = 512  # tar block size
PAX_HEADER, REGULAR_FILE = ord("x"), (ord("0"), 0)  # tar type flags


def load_manifest(shards_dir: Path | str) -> dict:
    return read_json(Path(shards_dir) / MANIFEST, made_by="shard")


def shard_urls(shards_dir: Path | str, split: str) -> list[str]:
    manifest = load_manifest(shards_dir)
    urls = [str(Path(shards_dir) / s["name"]) for s in manifest["splits"][split]["shards"]]
    if not urls:
        raise FileNotFoundError(f"{shards_dir}/{MANIFEST}: split {split!r} has no shards; check data.source and rerun `dvc repro shard`")
    return urls


class ShardFormatError(ValueError):
    """A shard that is not the tar sharding.py writes (cut short, damaged, or foreign)."""


def _members(data: bytes, url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file in an in-memory tar: the plain and PAX headers sharding.py writes.

    Indexing one read of the whole shard costs a fraction of tarfile's per-member reads
    (which at 64 px took as long as decoding the JPEGs). The shard's sha256 is in the
    manifest; here a header that does not parse or a body cut short stops the read.
    """
    offset, pax_name, end = 0, None, len(data)
    while offset + BLOCK <= end:
        if data[offset] == 0:  # a member always has a name: this is the end-of-archive block
            return
        try:
            size = int(data[offset + 124:offset + 136].rstrip(b"\0 "), 8)
        except ValueError as err:
            raise ShardFormatError(f"{url}: damaged tar header at byte {offset}; rerun `dvc repro shard`") from err
        start = offset + BLOCK
        if start + size > end:
            break
        kind = data[offset + 156]
        if kind == PAX_HEADER:  # 'NN path=<long name>\n' records for the next member
            records = data[start:start + size].decode().splitlines()
            pax_name = next((r.split("=", 1)[1] for r in records if " path=" in r), None)
        elif kind in REGULAR_FILE:
            name = pax_name or data[offset:offset + 100].split(b"\0", 1)[0].decode()
            if data[offset + 345] and data[offset + 257:offset + 262] == b"ustar" and not pax_name:
                name = data[offset + 345:offset + 500].split(b"\0", 1)[0].decode() + "/" + name
            pax_name = None
            yield name, data[start:start + size]
        offset = start + -(-size // BLOCK) * BLOCK
    raise ShardFormatError(f"{url}: cut short at byte {end} (no end-of-archive block); rerun `dvc repro shard`")


def shard_samples(shards: Iterator[dict]) -> Iterator[dict]:
    """WebDataset pipeline stage: {"url"} per shard -> raw samples {"__key__", "__url__", <ext>: bytes, ...}."""
    for shard in shards:
        url = shard["url"]
        with open(url, "rb") as fh:
            data = fh.read()
        sample: dict = {}
        for name, body in _members(data, url):
            key, ext = name.split(".", 1)
            if sample and key != sample["__key__"]:
                yield sample
                sample = {}
            sample.setdefault("__key__", key)
            sample["__url__"], sample[ext] = url, body
        if sample:
            yield sample


def decode_pixels(sample: dict) -> torch.Tensor:
    """The sample's image as (3, H, W) uint8, a view of (H, W, 3) memory (libjpeg's pixel order)."""
    encoded = torch.frombuffer(bytearray(sample["jpg"] if "jpg" in sample else sample["png"]), dtype=torch.uint8)
    # torchvision's libjpeg-turbo / libpng decode: ~2x PIL at 64 px, straight into a tensor. (Deprecated from
    # torchvision 0.29 in favour of TorchCodec, which needs FFmpeg on the machine; the pin keeps it working.)
    return decode_image(encoded, mode=ImageReadMode.RGB)


def decode_sample(sample: dict) -> dict:
    """Raw shard sample -> key, image (3, H, W) uint8, class index."""
    return {"__key__": sample["__key__"], "image": decode_pixels(sample), "cls": int(sample["cls"])}


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (B, 3, H, W) -> contiguous float in [-1, 1], the range the models take.

    Batches travel as uint8 (a quarter of the bytes of floats) and are converted where
    they are used, on the training device.
    """
    return images.contiguous().float() / 127.5 - 1


def _samples(urls: list[str], shuffle_seed: int | None) -> wds.DataPipeline:
    """Raw samples in shard order, or shuffled (shards and a buffer of encoded samples) from a seed.

    Shards are split between DDP processes (by node) and then between loader workers,
    so every process and worker reads a disjoint set of shards.
    """
    shuffled = shuffle_seed is not None
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node,
        wds.split_by_worker,
        *([wds.shuffle(len(urls), seed=shuffle_seed)] if shuffled else []),
        shard_samples,
        *([wds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)] if shuffled else []),
    )


def dataset(urls: list[str], shuffle_seed: int | None) -> wds.DataPipeline:
    """Decoded samples ({"__key__", "image", "cls"}), in shard order or shuffled from a seed."""
    return _samples(urls, shuffle_seed).compose(wds.map(decode_sample))


def _image_batches(batch_size: int, partial: bool, with_keys: bool):
    """Pipeline stage: raw samples -> uint8 (B, 3, H, W) batches (with their keys), decoding as it batches."""
    def stage(samples: Iterator[dict]) -> Iterator:
        images, keys = [], []
        for sample in samples:
            images.append(decode_pixels(sample).permute(1, 2, 0))  # (H, W, 3): contiguous, so stacking is one memcpy each
            keys.append(sample["__key__"])
            if len(images) == batch_size:
                batch = torch.stack(images).permute(0, 3, 1, 2)  # (B, 3, H, W)
                yield (batch, keys) if with_keys else batch
                images, keys = [], []
        if images and partial:
            batch = torch.stack(images).permute(0, 3, 1, 2)
            yield (batch, keys) if with_keys else batch
    return stage


def train_batches(urls: list[str], batch_size: int, seed: int, num_workers: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled uint8 batches (B, 3, H, W) (`to_model_range` on the device); epoch e reshuffles with seed + e.

    The stream depends only on (urls, batch_size, seed, workers): `skip` drops its first
    batches, so a resumed run continues with the batch an uninterrupted one would see next.
    """
    workers = min(num_workers, len(urls))
    epoch = produced = 0
    while True:
        ds = _samples(urls, shuffle_seed=seed + epoch).compose(_image_batches(batch_size, partial=False, with_keys=False))
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
        yielded = False
        for images in loader:
            yielded = True
            produced += 1
            if produced > skip:
                yield images
        if not yielded:
            raise ValueError(f"no full batch of {batch_size} in {len(urls)} shard(s); lower the batch size or add images")
        epoch += 1


class MeteredBatches:
    """A batch stream that counts the images it hands over and the time its consumer spent waiting for them."""

    def __init__(self, batches: Iterator[torch.Tensor]):
        self.batches, self.images, self.waited, self.began = batches, 0, 0.0, time.perf_counter()

    def __iter__(self) -> MeteredBatches:
        return self

    def __next__(self) -> torch.Tensor:
        asked = time.perf_counter()
        batch = next(self.batches)
        self.waited += time.perf_counter() - asked
        self.images += len(batch)
        return batch

    def close(self) -> None:
        self.batches.close()

    def throughput(self) -> dict:
        """images/s consumed, and the share of the time the consumer waited on input (near 0: not input-bound)."""
        elapsed = time.perf_counter() - self.began
        return {"train_images_per_s": self.images / elapsed, "input_wait_share": self.waited / elapsed}


def iterate_split(urls: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Every image of a split in shard order, in batches: ((B, 3, H, W) in [-1, 1], keys)."""
    for images, keys in _samples(urls, shuffle_seed=None).compose(_image_batches(batch_size, partial=True, with_keys=True)):
        yield to_model_range(images), keys


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
