"""Stage `eval_masks`: the holes of every mask kind for the val images the grid scores -> paths.masks."""
from __future__ import annotations

import sys
import time

from maskgit_inpaint import config
from maskgit_inpaint.data import eval_masks, shards
from maskgit_inpaint.io import atomic_dir


def summary_line(meta: eval_masks.MasksMeta, out) -> str:
    areas = ", ".join(f"{kind} {sum(h) / len(h) / meta.image_size ** 2:.0%}" for kind, h in meta.hidden.items())
    return (f"eval_masks: {len(meta.kinds)} kinds x {len(meta.keys)} val images, {meta.image_size}px, "
            f"mean hole area {areas} -> {out}")


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, paths = params.eval, params.paths
    keys = shards.split_keys(shards.shard_urls(paths.shards, "val"), p.num_images)
    with atomic_dir(paths.masks) as tmp:
        meta = eval_masks.write(tmp, kinds=p.masks, keys=keys, image_size=shards.load_manifest(paths.shards).image_size,
                                seed=p.seed, downsample=params.vqgan.downsample, random_token_ratio=p.random_token_ratio)
        line = summary_line(meta, paths.masks)
    print(f"{line} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
