"""Stage `extract_tokens`: encode train and val once -> uint16 token arrays + meta.json."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from maskgit_inpaint import config, runtime
from maskgit_inpaint.data import shards
from maskgit_inpaint.data.places365 import SPLITS
from maskgit_inpaint.data.token_encoding import encode_split
from maskgit_inpaint.data.tokens import META, TokenMeta
from maskgit_inpaint.io import atomic_dir, sha256_file
from maskgit_inpaint.models.checkpoint import WEIGHTS
from maskgit_inpaint.models.vqgan import VQGAN


def summary_line(meta: TokenMeta, prec: runtime.Precision, out: Path) -> str:
    h, w = meta.grid
    return (f"extract_tokens: train {meta.train_count} + val {meta.val_count} images -> {h}x{w} tokens "
            f"(K={meta.codebook_size}), {prec.describe()} -> {out}")


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, paths = params.tokens, params.paths
    dev = runtime.setup(0)
    prec = runtime.precision(p.precision, dev)
    vqgan = VQGAN.load(paths.vqgan, dev)
    image_size = shards.load_manifest(paths.shards).image_size
    grid = vqgan.config.token_grid(image_size)
    encoded = {split: encode_split(vqgan, shards.shard_urls(paths.shards, split), p.batch_size, prec) for split in SPLITS}
    meta = TokenMeta(codebook_size=vqgan.config.n_embed, grid=(grid, grid), downsample=vqgan.config.downsample,
                     image_size=image_size, dtype="uint16", vqgan_sha256=sha256_file(paths.vqgan / WEIGHTS),
                     train_count=len(encoded["train"].keys), train_keys=encoded["train"].keys,
                     val_count=len(encoded["val"].keys), val_keys=encoded["val"].keys)
    line = summary_line(meta, prec, paths.tokens)  # before any out is written
    with atomic_dir(paths.tokens) as tmp:
        for split, tokens in encoded.items():
            np.save(tmp / f"{split}.npy", tokens.ids)
        meta.write(tmp / META)
    print(f"{line} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
