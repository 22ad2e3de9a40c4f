"""Stage `shard`: Places365-layout images -> WebDataset tar shards + manifest.json."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from maskgit_inpaint import config
from maskgit_inpaint.data import image_folder, places365, shards
from maskgit_inpaint.io import atomic_dir, write_json


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, out = params.data, params.paths.shards
    root = params.paths.raw if p.source == "embedded" else Path(p.source)
    limits = {"train": p.limit_train, "val": p.limit_val}
    layout = "Places365 layout" if places365.is_places365_root(root) else "image folder, no classes"
    if places365.is_places365_root(root):
        categories = places365.read_categories(root)
        splits = {split: places365.read_split(root, split, limits[split]) for split in shards.SPLITS}
    else:  # any folder of images: no classes, val chosen by the seed
        categories = []
        splits = {split: entries[:limits[split]] for split, entries in
                  image_folder.read_splits(root, p.folder_val_fraction, p.seed).items()}
    manifest = {"source": str(root), "image_size": p.image_size, "categories": categories, "splits": {}}
    with atomic_dir(out) as tmp:
        for split in shards.SPLITS:
            entries = splits[split]
            min_shards = p.min_train_shards if split == "train" else 1
            manifest["splits"][split] = shards.write_split(entries, tmp, split, p.image_size, p.shard_max_count, min_shards,
                                                            p.min_side)
        write_json(tmp / shards.MANIFEST, manifest)
    counts = {s: manifest["splits"][s] for s in shards.SPLITS}
    rejected = sum(len(c["rejected"]) for c in counts.values())
    print(f"shard: {root} ({layout}): train {counts['train']['count']} images in {len(counts['train']['shards'])} shards, "
          f"val {counts['val']['count']} in {len(counts['val']['shards'])}; {rejected} rejected "
          f"(reasons in {out / shards.MANIFEST}) ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
