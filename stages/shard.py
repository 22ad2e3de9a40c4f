"""Stage `shard`: images from `data.source` (any layout sources.py reads) -> WebDataset tar shards + manifest.json."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from maskgit_inpaint import config
from maskgit_inpaint.data import sharding, sources
from maskgit_inpaint.data.places365 import SPLITS
from maskgit_inpaint.io import atomic_dir, write_json


# No torch in this stage: the worker pool's spawned processes re-import this module.
def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, out = params.data, params.paths.shards
    root = params.paths.raw if p.source == "embedded" else Path(p.source)
    source = sources.open_source(root, p.folder_val_fraction, p.seed, index_cache=params.paths.cache / "archive-index")
    limits = {"train": p.max_train, "val": p.max_val}
    jobs = {split: sharding.plan(split, sources.subset(source.splits[split], limits[split], p.seed), p.shard_max_count,
                                 p.min_train_shards if split == "train" else 1)
            for split in SPLITS}
    # Shards are built outside the out (which DVC clears before a run), so a killed run resumes from them.
    work_dir = params.paths.checkpoints / "shard"
    encoding = sharding.Encoding(p.image_size, p.min_side, p.jpeg_quality)
    built = sharding.write_shards(jobs["train"] + jobs["val"], work_dir, encoding, p.workers)
    manifest = {"source": str(root), "layout": source.description, "image_size": p.image_size,
                "categories": source.categories, "splits": {}}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            results = [r for r in built if r["name"].startswith(f"{split}-")]
            for r in results:
                for path in (work_dir / r["name"], sharding.index_path(work_dir / r["name"])):
                    shutil.move(path, tmp / path.name)
            manifest["splits"][split] = {
                "count": sum(r["count"] for r in results),
                "rejected": source.rejected[split] + [row for r in results for row in r["rejected"]],
                "shards": [{"name": r["name"], "sha256": r["sha256"]} for r in results],
            }
        write_json(tmp / sharding.MANIFEST, manifest)
    shutil.rmtree(work_dir)
    splits = manifest["splits"]
    rejected = sum(len(s["rejected"]) for s in splits.values())
    print(f"shard: {root} ({source.description}): train {splits['train']['count']} images in {len(splits['train']['shards'])} "
          f"shards, val {splits['val']['count']} in {len(splits['val']['shards'])}; {rejected} rejected "
          f"(reasons in {out / sharding.MANIFEST}) ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
