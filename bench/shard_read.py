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
overhead, not the disk. The three read paths run as endless streams that take turns,
SEGMENT images each, for ROUNDS rounds (the first WARM_UP dropped: the shuffle buffer
fills); a rate is SEGMENT / the median segment time, and a round's ratio is taken
within the round, so a neighbour's load on a shared machine, which swings single
timings here by 30%, slows both sides of it. ratio (per size) = the median over rounds
of shard_read / decode (>= 0.8: I/O and framework overhead under 20%), with its 10th
to 90th percentile; the JSON's ratio = the lowest over sizes. Last line: JSON.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the stage's progress bars would bury the figures

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from maskgit_inpaint import config  # noqa: E402
from maskgit_inpaint.data import sharding, sources  # noqa: E402
from maskgit_inpaint.data.scenes import CATEGORIES, render  # noqa: E402

ROUNDS, WARM_UP = 200, 10
BATCH = 32
SIZES = {64: 4096, 256: 1024}  # image size -> images
SEGMENT = {64: 256, 256: 64}  # image size -> images per timed turn (a multiple of BATCH)


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
    sharding_s = min(timed(lambda r=r: sharding.write_shards(jobs, tmp / f"shards{r}", encoding, workers)) for r in range(3))
    urls = [str(tmp / "shards0" / job.name) for job in jobs]

    segment = SEGMENT[size]

    def cycled(items: list) -> Iterator[list]:  # segment divides len(items)
        for start in itertools.count(0, segment):
            yield items[start % len(items):start % len(items) + segment]

    def decode() -> Iterator[None]:
        for part in cycled(encoded):
            for data in part:
                shards.decode_pixels(data, "jpg")
            yield

    def shard_read() -> Iterator[None]:
        batches = shards.train_batches(urls, BATCH, seed=0, num_workers=0)  # endless: epoch after epoch
        while True:
            for _ in range(segment // BATCH):
                next(batches)
            yield

    def loose_files() -> Iterator[None]:
        for part in cycled(paths):
            for path in part:
                shards.decode_pixels(path.read_bytes(), "jpg")
            yield

    streams = {"decode": decode(), "shard_read": shard_read(), "loose_files": loose_files()}
    seconds = {name: [] for name in streams}
    for _ in range(ROUNDS):
        for name, stream in streams.items():
            seconds[name].append(timed(lambda stream=stream: next(stream)))
    times = {name: np.array(s[WARM_UP:]) for name, s in seconds.items()}
    ratios = times["decode"] / times["shard_read"]
    return {"size": size, "images": count, "sharding": rate(count, sharding_s),
            **{name: rate(segment, float(np.median(t))) for name, t in times.items()},
            "ratio": float(np.median(ratios)), "ratio_p10_p90": [round(float(q), 3) for q in np.percentile(ratios, [10, 90])]}


def main() -> None:
    workers = config.load(config.DEFAULT_PARAMS).data.workers
    rows = []
    for size, count in SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(size, count, workers, Path(tmp)))
        r = rows[-1]
        print(f"{size:>3} px, {r['images']} images (images/s): sharding {r['sharding']:.0f} ({workers} workers) | "
              f"decode {r['decode']:.0f} | shard_read {r['shard_read']:.0f} | loose_files {r['loose_files']:.0f} | "
              f"ratio shard_read/decode {r['ratio']:.2f} (p10-p90 {r['ratio_p10_p90'][0]:.2f}-{r['ratio_p10_p90'][1]:.2f})")
    print(json.dumps({"ratio": round(min(r["ratio"] for r in rows), 3), **{f"ratio_{r['size']}": round(r["ratio"], 3) for r in rows},
                      "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
