"""Is the shard loader decode-bound? images/s of the input pipeline's parts, side by side.

Per image size (64 px: the embedded profile; 256 px: Places365's small images), on the
same photo-like JPEGs (procedural scenes, quality 90, already at the size, so sharding
checks and passes them through as it does Places365's 256 px files):
- sharding: loose files -> shards with the stage's writer (data.workers processes);
- decode: the loader's decode (JPEG -> (H, W, 3) uint8 array) from bytes in memory,
  one process: the most a loader in one process can deliver on this machine;
- shard_read: the training loader (train_batches: shard shuffle, the shard's index, shuffle buffer,
  decode, batching), one process;
- loose_files: reading each file from disk and the same decode, one process.
Files were just written, so reads come from the page cache: this measures framework
overhead, not the disk. Each rate is the best of ROUNDS; within a round the three read
paths run back to back, and the ratio shard_read / decode of each round is taken there,
so a neighbour's load on a shared machine slows both sides of it. ratio (per size) = the
median of those per-round ratios (>= 0.8: overhead under 20%); the JSON's ratio = the
lowest over sizes. Last line: JSON.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the stage's progress bars would bury the figures

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from maskgit_inpaint import config  # noqa: E402
from maskgit_inpaint.data import sharding, sources  # noqa: E402
from maskgit_inpaint.data.scenes import CATEGORIES, render  # noqa: E402

ROUNDS = 11
BATCH = 32
SIZES = {64: 4096, 256: 1024}  # image size -> images


def write_photos(root: Path, size: int, count: int) -> list[Path]:
    rng = np.random.default_rng(size)
    paths = []
    for i in range(count):
        category = CATEGORIES[i % len(CATEGORIES)]
        path = root / "train" / category.strip("/").replace("/", "_") / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(category, size, 0.02, rng)).save(path, quality=90)
        paths.append(path)
    (root / "val" / "any").mkdir(parents=True)
    Image.fromarray(render(CATEGORIES[0], size, 0.02, rng)).save(root / "val/any/0.jpg", quality=90)
    return paths


def rate(count: int, seconds: float) -> float:
    return count / seconds


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(size: int, count: int, workers: int, tmp: Path) -> dict:
    # Imported here: the sharding pool's spawned workers re-import this module and should not load torch.
    from maskgit_inpaint.data import shards

    paths = write_photos(tmp / "photos", size, count)
    encoded = [p.read_bytes() for p in paths]
    entries = sources.open_source(tmp / "photos", 0.1, 0).splits["train"]
    jobs = sharding.plan("train", entries, max_count=256, min_shards=workers)
    encoding = sharding.Encoding(size, 1, None)
    sharding_s = min(timed(lambda r=r: sharding.write_shards(jobs, tmp / f"shards{r}", encoding, workers)) for r in range(ROUNDS))
    urls = [str(tmp / "shards0" / job.name) for job in jobs]

    def decode() -> None:
        for data in encoded:
            shards.decode_pixels(data, "jpg")

    def shard_read() -> None:
        batches = shards.train_batches(urls, BATCH, seed=0, num_workers=0)
        for _ in range(count // BATCH):
            next(batches)
        batches.close()

    def loose_files() -> None:
        for path in paths:
            shards.decode_pixels(path.read_bytes(), "jpg")

    read = count // BATCH * BATCH
    seconds = {"decode": [], "shard_read": [], "loose_files": []}
    decode()  # warm-up: imports, allocator
    for _ in range(ROUNDS):
        for name, fn in (("decode", decode), ("shard_read", shard_read), ("loose_files", loose_files)):
            seconds[name].append(timed(fn))
    ratios = [rate(read, s) / rate(count, d) for s, d in zip(seconds["shard_read"], seconds["decode"])]
    return {"size": size, "images": count, "sharding": rate(count, sharding_s), "decode": rate(count, min(seconds["decode"])),
            "shard_read": rate(read, min(seconds["shard_read"])), "loose_files": rate(count, min(seconds["loose_files"])),
            "ratio": float(np.median(ratios)), "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}


def main() -> None:
    workers = config.load(config.DEFAULT_PARAMS).data.workers
    rows = []
    for size, count in SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(size, count, workers, Path(tmp)))
        r = rows[-1]
        print(f"{size:>3} px, {r['images']} images (images/s): sharding {r['sharding']:.0f} ({workers} workers) | "
              f"decode {r['decode']:.0f} | shard_read {r['shard_read']:.0f} | loose_files {r['loose_files']:.0f} | "
              f"ratio shard_read/decode {r['ratio']:.2f} (rounds {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})")
    print(json.dumps({"ratio": round(min(r["ratio"] for r in rows), 3), **{f"ratio_{r['size']}": round(r["ratio"], 3) for r in rows},
                      "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
