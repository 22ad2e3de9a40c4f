"""Stage `sample`: the embedded sample in the Places365-Standard layout -> paths.raw."""
from __future__ import annotations

import sys
import time

from maskgit_inpaint import config
from maskgit_inpaint.data import sample
from maskgit_inpaint.io import atomic_dir


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, out = params.sample, params.paths.raw
    with atomic_dir(out) as tmp:
        counts = sample.generate(tmp, p.seed, p.image_size, p.train_per_category, p.val_per_category, p.noise)
    print(f"sample: {counts['train']} train + {counts['val']} val images, {counts['categories']} categories, "
          f"{p.image_size}px -> {out} ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
