"""Token arrays on disk: uint16 (N, h*w), memory-mappable, one per split, plus meta.json."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskgit_inpaint import runtime
from maskgit_inpaint.data import shards
from maskgit_inpaint.io import read_json
from maskgit_inpaint.models.vqgan import VQGAN

META = "meta.json"


@torch.no_grad()
def encode_split(vqgan: VQGAN, urls: list[str], batch_size: int, prec: runtime.Precision) -> tuple[np.ndarray, list[str]]:
    """Every image of a split -> (N, h*w) uint16 token ids and the sample keys, in shard order."""
    dev = prec.device
    arrays, keys = [], []
    for images, batch_keys in tqdm(shards.iterate_split(urls, batch_size), desc="encode", unit="batch", leave=False):
        with prec.autocast():
            ids = vqgan.encode(images.to(dev))  # (B, h, w)
        arrays.append(ids.flatten(1).to(torch.int32).cpu().numpy().astype(np.uint16))
        keys.extend(batch_keys)
    return np.concatenate(arrays), keys


def load(tokens_dir: Path | str, split: str) -> np.ndarray:
    """(N, h*w) uint16 array, memory-mapped."""
    path = Path(tokens_dir) / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro extract_tokens` first")
    return np.load(path, mmap_mode="r")


def load_meta(tokens_dir: Path | str) -> dict:
    return read_json(Path(tokens_dir) / META, made_by="extract_tokens")
