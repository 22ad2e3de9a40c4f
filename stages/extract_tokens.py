"""Stage `extract_tokens`: encode train and val once -> uint16 token arrays + meta.json."""
from __future__ import annotations

import sys
import time

import numpy as np

from maskgit_inpaint import config, runtime
from maskgit_inpaint.data import shards
from maskgit_inpaint.data import tokens as token_store
from maskgit_inpaint.data.places365 import SPLITS
from maskgit_inpaint.io import atomic_dir, sha256_file, write_json
from maskgit_inpaint.models.checkpoint import WEIGHTS
from maskgit_inpaint.models.vqgan import VQGAN


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, paths = params.tokens, params.paths
    dev = runtime.setup(0)
    prec = runtime.precision(p.precision, dev)
    vqgan = VQGAN.load(paths.vqgan, dev)
    image_size = shards.load_manifest(paths.shards)["image_size"]
    grid = vqgan.config.token_grid(image_size)
    meta = {"codebook_size": vqgan.config.n_embed, "grid": [grid, grid], "downsample": vqgan.config.downsample,
            "image_size": image_size, "dtype": "uint16", "vqgan_sha256": sha256_file(paths.vqgan / WEIGHTS)}
    with atomic_dir(paths.tokens) as tmp:
        for split in SPLITS:
            ids, keys = token_store.encode_split(vqgan, shards.shard_urls(paths.shards, split), p.batch_size, prec)
            np.save(tmp / f"{split}.npy", ids)
            meta[f"{split}_count"] = len(keys)
            meta[f"{split}_keys"] = keys
        write_json(tmp / token_store.META, meta)
    print(f"extract_tokens: train {meta['train_count']} + val {meta['val_count']} images -> {grid}x{grid} tokens "
          f"(K={meta['codebook_size']}), {prec.describe()} -> {paths.tokens} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
