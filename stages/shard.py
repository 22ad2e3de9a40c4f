"""Stage `shard`: images from `data.source` (any layout sources.py reads) -> WebDataset tar shards + manifest.json."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from maskgit_inpaint import config
from maskgit_inpaint.data import sharding, sources
from maskgit_inpaint.data.manifest import MANIFEST, RejectedRow, ShardManifest, SplitManifest, index_path
from maskgit_inpaint.data.places365 import SPLITS
from maskgit_inpaint.io import atomic_dir


def summary_line(manifest: ShardManifest, manifest_path: Path) -> str:
    train, val = manifest.splits["train"], manifest.splits["val"]
    return (f"shard: {manifest.source} ({manifest.layout}): train {train.count} images in {len(train.shards)} shards, "
            f"val {val.count} in {len(val.shards)}; {manifest.rejected_count} rejected (reasons in {manifest_path})")


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
    manifest = ShardManifest(
        source=str(root), layout=source.description, image_size=p.image_size, categories=source.categories,
        splits={split: SplitManifest.of([shard for shard in built if shard.name.startswith(f"{split}-")],
                                        [RejectedRow(**row) for row in source.rejected[split]])
                for split in SPLITS})
    line = summary_line(manifest, out / MANIFEST)  # before any out is written or the resumable shards are removed
    with atomic_dir(out) as tmp:
        for shard in built:
            for path in (work_dir / shard.name, index_path(work_dir / shard.name)):
                shutil.move(path, tmp / path.name)
        manifest.write(tmp / MANIFEST)
    shutil.rmtree(work_dir)
    print(f"{line} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
