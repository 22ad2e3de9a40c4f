"""WebDataset shards read back for training and evaluation (data/sharding.py writes them).

A sample is `__key__`, `jpg` or `png` (RGB, image_size x image_size) and `cls`. Read,
it travels through the pipeline as an `Encoded` tuple until it is decoded.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from functools import partial
from itertools import chain, islice, repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from torchvision.io import ImageReadMode, decode_image

from maskgit_inpaint.data.manifest import INDEX_FIELDS, MANIFEST, ShardManifest, index_path

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

SHUFFLE_BUFFER = 1000  # samples mixed across shards before batching
BLOCK = 512  # tar block size
PAX_HEADER, REGULAR_FILE = ord("x"), (ord("0"), 0)  # tar type flags


def load_manifest(shards_dir: Path | str) -> ShardManifest:
    return ShardManifest.read(Path(shards_dir) / MANIFEST, made_by="shard")


def shard_urls(shards_dir: Path | str, split: str) -> list[str]:
    urls = [str(Path(shards_dir) / shard.name) for shard in load_manifest(shards_dir).splits[split].shards]
    if not urls:
        raise FileNotFoundError(f"{shards_dir}/{MANIFEST}: split {split!r} has no shards; check data.source and rerun `dvc repro shard`")
    return urls


class ShardFormatError(ValueError):
    """A shard that is not the tar sharding.py writes (cut short, damaged, or foreign)."""


class Encoded(NamedTuple):
    """One sample as read from a shard, not yet decoded.

    A tuple, not WebDataset's usual dict (with a thousand samples in the shuffle buffer,
    dicts cost ~5% of the time of decoding a 64 px JPEG), holding bytes copied out of the
    shard: views into it (read or memory-mapped) were no faster in interleaved runs, and
    would keep a whole shard in memory while any of its samples waits in the buffer.
    """
    key: str
    url: str  # the shard it came from, named in errors
    ext: str  # "jpg" or "png": which decoder
    data: bytes  # the encoded image
    label: int  # class index (-1: none)


def _indexed_samples(data: bytes, url: str) -> list[Encoded] | None:
    """Samples sliced out of a shard by the index sharding.py writes beside it; None for a shard without one.

    At 64 px, parsing the tar headers in Python took 3.8 us per image, a sixth of the time
    of decoding the JPEG; reading the index and slicing, 0.8.
    """
    path = index_path(url)
    try:
        index = json.loads(path.read_bytes())
        columns = [index[field] for field in INDEX_FIELDS]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        raise ShardFormatError(f"{path}: not a shard index ({err!r}); rerun `dvc repro shard`") from err
    if index.get("shard_bytes") != len(data):
        raise ShardFormatError(f"{url}: {len(data)} bytes, but its index {path.name} was written for a shard of "
                               f"{index.get('shard_bytes')}; rerun `dvc repro shard`")
    keys, exts, starts, sizes, labels = columns
    images = [data[start:start + size] for start, size in zip(starts, sizes)]
    # tuple.__new__ over zip builds the tuples in C: a fifth of the time of calling Encoded(...) per sample
    return list(map(tuple.__new__, repeat(Encoded), zip(keys, repeat(url), exts, images, labels)))


def _tar_samples(data: bytes, url: str) -> Iterator[dict]:
    """Samples of an in-memory shard without an index: consecutive files "<key>.<ext>" with one key make one sample.

    One pass over the headers (plain and PAX) of one read of the whole shard costs a
    fraction of tarfile's per-member reads. The shard's sha256 is in the manifest; here a
    header that does not parse or a body cut short stops the read.
    """
    sample, key, offset, pax_name, end = None, None, 0, None, len(data)
    while offset + BLOCK <= end:
        if data[offset] == 0:  # a member always has a name: this is the end-of-archive block
            if sample is not None:
                yield sample
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
            if pax_name is None:  # the header's NUL-padded name, after ustar's directory prefix if any
                name = data[offset:offset + 100].rstrip(b"\0").decode()
                if data[offset + 345] and data[offset + 257:offset + 262] == b"ustar":
                    name = data[offset + 345:offset + 500].rstrip(b"\0").decode() + "/" + name
            else:
                name, pax_name = pax_name, None
            stem, _, ext = name.partition(".")
            if stem != key:
                if sample is not None:
                    yield sample
                key, sample = stem, {"__key__": stem, "__url__": url}
            sample[ext] = data[start:start + size]
        else:  # a directory or link: in no sample; a PAX name before it was its own
            pax_name = None
        offset = start + (size + BLOCK - 1) // BLOCK * BLOCK
    raise ShardFormatError(f"{url}: cut short at byte {end} (no end-of-archive block); rerun `dvc repro shard`")


def _encoded(sample: dict) -> Encoded:
    """A sample parsed from the tar -> Encoded."""
    ext = next((ext for ext in ("jpg", "png") if ext in sample), None)
    if ext is None:
        raise ShardFormatError(f"{sample['__url__']}: sample {sample['__key__']} has no .jpg or .png member; rerun `dvc repro shard`")
    return Encoded(sample["__key__"], sample["__url__"], ext, sample[ext], int(sample.get("cls", -1)))


def shard_samples(shards: Iterator[dict]) -> Iterator[list[Encoded]]:
    """WebDataset pipeline stage: {"url"} per shard -> the list of its samples, by its index or else by parsing the tar.

    Samples travel between the stages after this one a shard's list at a time, not one by
    one: the stages loop over lists, not through a chain of generators.
    """
    for shard in shards:
        url = shard["url"]
        with open(url, "rb") as fh:
            data = fh.read()
        indexed = _indexed_samples(data, url)
        yield list(map(_encoded, _tar_samples(data, url))) if indexed is None else indexed


def decode_pixels(data: bytes, ext: str, out: np.ndarray | None = None) -> np.ndarray:
    """An encoded image as (H, W, 3) uint8 RGB; decoded into `out` (a batch's slot) when given and of its size.

    The caller compares the returned shape with `out`'s. JPEG goes through simplejpeg
    (libjpeg-turbo, ~1.8x torchvision's decode_image at 64 px, and it writes into a given
    buffer, which saves a copy per image when batching); PNG, and any JPEG simplejpeg
    refuses, through torchvision.
    """
    if ext == "jpg":
        try:  # strict=False: libjpeg's warnings (e.g. stray bytes before the end marker) pass, as they did in sharding
            return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=False)
        except ValueError:  # one it refuses (or too big for `out`): torchvision decides
            pass
    pixels = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    pixels = pixels.permute(1, 2, 0).numpy()  # (H, W, 3)
    if out is not None and pixels.shape == out.shape:
        out[...] = pixels
    return pixels


def decode_sample(sample: Encoded) -> dict:
    """Encoded sample -> key, image (3, H, W) uint8, class index."""
    return {"__key__": sample.key, "image": torch.from_numpy(decode_pixels(sample.data, sample.ext)).permute(2, 0, 1),
            "cls": sample.label}


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (B, 3, H, W) -> contiguous float in [-1, 1], the range the models take.

    Batches travel as uint8 (a quarter of the bytes of floats) and are converted where
    they are used, on the training device.
    """
    return images.contiguous().float() / 127.5 - 1


def _shuffle_buffer(blocks: Iterator[list[Encoded]], size: int, seed: int) -> Iterator[list[Encoded]]:
    """Pipeline stage: lists of samples -> the same samples, mixed through a buffer of `size` (a permutation when fewer).

    Once the buffer is full, a random sample leaves it as each new one arrives, as in
    wds.shuffle; that draws with random.randint per sample (1.5 us at 64 px, 6% of
    decoding the JPEG), here numpy draws a list's slots at once.
    """
    rng, buffer = np.random.default_rng(seed), []
    for block in blocks:
        room = max(size - len(buffer), 0)
        buffer.extend(block[:room])
        incoming, moving_on = block[room:], []
        slots = (rng.random(len(incoming)) * size).astype(np.intp).tolist()
        for sample, slot in zip(incoming, slots):
            moving_on.append(buffer[slot])
            buffer[slot] = sample
        if moving_on:
            yield moving_on
    yield [buffer[i] for i in rng.permutation(len(buffer)).tolist()]


def _samples(urls: list[str], shuffle_seed: int | None) -> wds.DataPipeline:
    """Lists of raw samples in shard order, or shuffled (shards and a buffer of encoded samples) from a seed.

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
        *([partial(_shuffle_buffer, size=SHUFFLE_BUFFER, seed=shuffle_seed)] if shuffled else []),
    )


def dataset(urls: list[str], shuffle_seed: int | None) -> wds.DataPipeline:
    """Decoded samples ({"__key__", "image", "cls"}), in shard order or shuffled from a seed."""
    return _samples(urls, shuffle_seed).compose(chain.from_iterable, wds.map(decode_sample))


def _decode_batch(samples: list[Encoded]) -> np.ndarray:
    """Samples -> (B, H, W, 3) uint8, each image decoded into its slot; the first image gives the size."""
    first = decode_pixels(samples[0].data, samples[0].ext)
    pixels = np.empty((len(samples), *first.shape), dtype=np.uint8)  # (B, H, W, 3)
    pixels[0] = first
    for sample, slot in zip(samples[1:], pixels[1:]):
        decoded = decode_pixels(sample.data, sample.ext, out=slot)
        if decoded.shape != slot.shape:
            raise ShardFormatError(f"{sample.url}: image {sample.key} is {decoded.shape[1]}x{decoded.shape[0]}, the "
                                   f"batch's first {slot.shape[1]}x{slot.shape[0]}; rerun `dvc repro shard`")
    return pixels


def _image_batches(blocks: Iterator[list[Encoded]], batch_size: int, short_last: bool, with_keys: bool) -> Iterator:
    """Pipeline stage: lists of raw samples -> uint8 (B, 3, H, W) batches (with their keys), a last short one if `short_last`."""
    samples = chain.from_iterable(blocks)
    while chunk := list(islice(samples, batch_size)):
        if len(chunk) < batch_size and not short_last:
            return
        images = torch.from_numpy(_decode_batch(chunk)).permute(0, 3, 1, 2)  # (B, 3, H, W), a view of (B, H, W, 3)
        yield (images, [sample.key for sample in chunk]) if with_keys else images


def train_batches(urls: list[str], batch_size: int, seed: int, num_workers: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled uint8 batches (B, 3, H, W) (`to_model_range` on the device); epoch e reshuffles with seed + e.

    The stream depends only on (urls, batch_size, seed, workers): `skip` drops its first
    batches, so a resumed run continues with the batch an uninterrupted one would see next.
    """
    workers = min(num_workers, len(urls))
    epoch = produced = 0
    while True:
        ds = _samples(urls, shuffle_seed=seed + epoch).compose(
            partial(_image_batches, batch_size=batch_size, short_last=False, with_keys=False))
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers) if workers else ds  # in-process: no DataLoader
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
    batches = partial(_image_batches, batch_size=batch_size, short_last=True, with_keys=True)
    for images, keys in _samples(urls, shuffle_seed=None).compose(batches):
        yield to_model_range(images), keys


def split_keys(urls: list[str], limit: int | None = None) -> list[str]:
    """The keys of the first `limit` samples of a split, in shard order, without decoding an image."""
    keys = []
    for block in _samples(urls, shuffle_seed=None):
        keys.extend(sample.key for sample in block)
        if limit is not None and len(keys) >= limit:
            break
    return keys[:limit]


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
