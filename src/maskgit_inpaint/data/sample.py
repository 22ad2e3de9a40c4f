"""The embedded sample: procedural scenes written in the Places365-Standard layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskgit_inpaint.data import places365
from maskgit_inpaint.data.scenes import CATEGORIES, render


@dataclass(frozen=True)
class SampleCounts:
    train: int  # images
    val: int
    categories: int


def generate(root: Path, *, seed: int, image_size: int, train_per_category: int, val_per_category: int,
             noise: float) -> SampleCounts:
    """Write the sample under `root` (which must be empty); returns what it wrote."""
    train_dir, val_dir = root / places365.SPLIT_DIRS["train"][0], root / places365.SPLIT_DIRS["val"][0]
    rng = np.random.default_rng(seed)
    train, val = [], []
    total = len(CATEGORIES) * (train_per_category + val_per_category)
    with tqdm(total=total, desc="sample", unit="img", leave=False) as bar:
        for label, category in enumerate(CATEGORIES):
            (train_dir / category.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for i in range(1, train_per_category + 1):
                relative = f"{category}/{i:08d}.jpg"
                Image.fromarray(render(category, image_size, noise, rng)).save(train_dir / relative.lstrip("/"), quality=95)
                train.append((relative, label))
                bar.update()
        # Official val files are numbered across categories, so interleave them.
        val_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(CATEGORIES) * val_per_category):
            label = i % len(CATEGORIES)
            name = f"Places365_val_{i + 1:08d}.jpg"
            Image.fromarray(render(CATEGORIES[label], image_size, noise, rng)).save(val_dir / name, quality=95)
            val.append((name, label))
            bar.update()
    places365.write_layout(root, list(CATEGORIES), train, val)
    return SampleCounts(train=len(train), val=len(val), categories=len(CATEGORIES))
