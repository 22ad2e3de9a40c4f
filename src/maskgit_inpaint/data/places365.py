"""The Places365-Standard file layout: category list, train/val file lists, image folders.

The embedded sample is written in this layout, so the reader serves both it and a
real copy of Places365 (http://places2.csail.mit.edu/download.html).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CATEGORIES_FILE = "categories_places365.txt"
SPLIT_LISTS = {"train": "places365_train_standard.txt", "val": "places365_val.txt"}
# Image folders of the official archives, small (256x256) first.
SPLIT_DIRS = {"train": ("data_256", "data_large"), "val": ("val_256", "val_large")}


@dataclass(frozen=True)
class Entry:
    key: str  # unique, WebDataset-safe (no dots, no slashes)
    path: Path  # image path (under the root as given)
    relative: str  # the path as the file list writes it
    label: int


class LayoutError(FileNotFoundError):
    """The folder is not in the Places365-Standard layout."""


def is_places365_root(root: Path) -> bool:
    """Does `root` hold the Places365-Standard category list (rather than just images)?"""
    return (root / CATEGORIES_FILE).is_file()


def image_dir(root: Path, split: str) -> Path:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    raise LayoutError(
        f"{root}: no image folder for split {split!r} (looked for {', '.join(SPLIT_DIRS[split])}); "
        "extract the Places365-Standard archives there or set data.source to the folder that holds them"
    )


def read_categories(root: Path) -> list[str]:
    path = root / CATEGORIES_FILE
    if not path.is_file():
        raise LayoutError(f"{path}: not found; a Places365 root holds {CATEGORIES_FILE} (from filelist_places365-standard.tar)")
    names = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, index = line.rsplit(maxsplit=1)
            names[int(index)] = name
    return [names[i] for i in sorted(names)]


def key_for(relative: str) -> str:
    """'/c/coast/00000001.jpg' -> 'c__coast__00000001' (WebDataset splits keys at the first dot)."""
    stem = relative.strip("/").rsplit(".", 1)[0]
    return stem.replace("/", "__").replace(".", "_")


def read_split(root: Path | str, split: str, limit: int | None = None) -> list[Entry]:
    """Entries of one split in file-list order (the first `limit` when given)."""
    root = Path(root)
    path = root / SPLIT_LISTS[split]
    if not path.is_file():
        raise LayoutError(f"{path}: not found; a Places365 root holds {SPLIT_LISTS[split]} (from filelist_places365-standard.tar)")
    folder = image_dir(root, split)
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            relative, label = line.rsplit(maxsplit=1)
            entries.append(Entry(key_for(relative), folder / relative.lstrip("/"), relative, int(label)))
        except ValueError as err:
            raise LayoutError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}") from err
        if limit is not None and len(entries) >= limit:
            break
    return entries


def write_layout(root: Path, categories: list[str], train: list[tuple[str, int]], val: list[tuple[str, int]]) -> None:
    """Write the category and split lists for images already placed under root."""
    (root / CATEGORIES_FILE).write_text("".join(f"{name} {i}\n" for i, name in enumerate(categories)))
    for split, rows in (("train", train), ("val", val)):
        (root / SPLIT_LISTS[split]).write_text("".join(f"{rel} {label}\n" for rel, label in rows))
