"""Images of the shards -> token ids, with the tokenizer (data/tokens.py stores and reads them without it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from maskgit_inpaint import runtime
from maskgit_inpaint.data import shards
from maskgit_inpaint.models.vqgan import VQGAN


@dataclass(frozen=True)
class EncodedSplit:
    ids: np.ndarray  # (N, h*w) uint16
    keys: list[str]  # sample key of each row, in shard order


@torch.no_grad()
def encode_split(vqgan: VQGAN, urls: list[str], batch_size: int, prec: runtime.Precision) -> EncodedSplit:
    """Every image of a split -> its token ids, in shard order."""
    dev = prec.device
    arrays, keys = [], []
    for images, batch_keys in tqdm(shards.iterate_split(urls, batch_size), desc="encode", unit="batch", leave=False):
        with prec.autocast():
            ids = vqgan.encode(images.to(dev))  # (B, h, w)
        arrays.append(ids.flatten(1).to(torch.int32).cpu().numpy().astype(np.uint16))
        keys.extend(batch_keys)
    return EncodedSplit(np.concatenate(arrays), keys)
