"""Stage `sample`: the embedded sample in the Places365-Standard layout -> paths.raw."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from maskgit_inpaint import config
from maskgit_inpaint.data import sample
from maskgit_inpaint.io import atomic_dir


def summary_line(counts: sample.SampleCounts, image_size: int, out: Path) -> str:
    return (f"sample: {counts.train} train + {counts.val} val images, {counts.categories} categories, "
            f"{image_size}px -> {out}")


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, out = params.sample, params.paths.raw
    with atomic_dir(out) as tmp:
        counts = sample.generate(tmp, seed=p.seed, image_size=p.image_size, train_per_category=p.train_per_category,
                                 val_per_category=p.val_per_category, noise=p.noise)
        line = summary_line(counts, p.image_size, out)  # inside: a failure here leaves no out behind
    print(f"{line} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
