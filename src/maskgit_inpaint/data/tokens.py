"""Token arrays on disk: uint16 (N, h*w), memory-mappable, one per split, plus meta.json (TokenMeta).

Reading them needs neither torch nor the tokenizer; data/token_encoding.py makes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from maskgit_inpaint.data.records import StoredRecord

META = "meta.json"


class TokenMeta(StoredRecord):
    """What the token arrays beside it hold, and which tokenizer made them."""

    codebook_size: int  # K: ids are 0..K-1 (the transformer's [MASK] is K)
    grid: tuple[int, int]  # (h, w) tokens per image; a row of an array is h*w ids, row-major
    downsample: int  # f: a token covers an f x f patch
    image_size: int  # of the images encoded
    dtype: Literal["uint16"]
    vqgan_sha256: str  # of the tokenizer's weights
    train_count: int
    train_keys: list[str]  # sample key of each row of train.npy
    val_count: int
    val_keys: list[str]

    @model_validator(mode="after")
    def _counts_match_keys(self) -> TokenMeta:
        for split, count, keys in (("train", self.train_count, self.train_keys), ("val", self.val_count, self.val_keys)):
            if count != len(keys):
                raise ValueError(f"{split}_count is {count} but there are {len(keys)} {split}_keys")
        return self


def load(tokens_dir: Path | str, split: str) -> np.ndarray:
    """(N, h*w) uint16 array, memory-mapped."""
    path = Path(tokens_dir) / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro extract_tokens` first")
    return np.load(path, mmap_mode="r")


def load_meta(tokens_dir: Path | str) -> TokenMeta:
    return TokenMeta.read(Path(tokens_dir) / META, made_by="extract_tokens")
