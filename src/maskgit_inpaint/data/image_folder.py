"""Any folder of images (no classes) as a source: every image file below it, split into train/val by a seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskgit_inpaint.data.places365 import Entry, key_for, printable

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
NO_CLASS = -1  # the `cls` of images that come without a category


def is_listed(path: Path) -> bool:
    """A file to take: a regular one, or a link whose target is gone (then rejected with that reason, not skipped)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def read_splits(root: Path | str, val_fraction: float, seed: int) -> dict[str, list[Entry]]:
    """Every image file under `root` (recursively, by suffix), in path order, split train/val.

    The val set is a seeded random choice of round(val_fraction * N) files (at least
    one), so it does not depend on the order the file system lists them in.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; set data.source to a folder of images, "
                                "a Places365-Standard root, or 'embedded'")
    files = sorted(p for p in root.rglob("*") if is_listed(p) and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise FileNotFoundError(f"{root}: {len(files)} image file(s) ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                "train and val need at least one each")
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    val = set(np.random.default_rng(seed).choice(len(files), n_val, replace=False).tolist())
    splits: dict[str, list[Entry]] = {"train": [], "val": []}
    for i, path in enumerate(files):
        relative = path.relative_to(root).as_posix()
        splits["val" if i in val else "train"].append(Entry(key_for(relative), path, printable(relative), NO_CLASS))
    return splits
