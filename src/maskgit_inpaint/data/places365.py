"""The Places365-Standard layouts: category list, train/val file lists, image folders, official archives.

The embedded sample is written in the extracted file-list layout, so the reader serves
both it and a real copy of Places365 (http://places2.csail.mit.edu/download.html).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val")
CATEGORIES_FILE = "categories_places365.txt"
SPLIT_LISTS = {"train": "places365_train_standard.txt", "val": "places365_val.txt"}
# Image folders of the official archives, small (256x256) first.
SPLIT_DIRS = {"train": ("data_256", "data_large"), "val": ("val_256", "val_large")}
# The official downloads, read as they are (never extracted).
FILELIST_ARCHIVE = "filelist_places365-standard.tar"
SPLIT_ARCHIVES = {"train": ("train_256_places365standard.tar", "train_large_places365standard.tar"),
                  "val": ("val_256.tar", "val_large.tar")}
EASYFORMAT_ARCHIVE = "places365standard_easyformat.tar"


@dataclass(frozen=True, slots=True)  # millions of them for Places365: no per-object dict
class Entry:
    key: str  # WebDataset-safe (no dots, no slashes); sources.open_source makes it unique in the source
    path: Path  # the image file, or the archive that holds it
    relative: str  # the image's name as its list or archive writes it
    label: int  # class index, -1 without classes
    span: tuple[int, int] | None = None  # (offset, size) of the image in the archive `path`; None: the whole file


class LayoutError(FileNotFoundError):
    """The source is not in the layout it claims to be."""


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


def parse_categories(text: str, origin: str) -> list[str]:
    """'/a/airfield 0' lines -> names in index order."""
    names = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                name, index = line.rsplit(maxsplit=1)
                names[int(index)] = name
            except ValueError as err:
                raise LayoutError(f"{origin}:{number}: expected '<category> <index>', got {line!r}") from err
    return [names[i] for i in sorted(names)]


def parse_split_list(text: str, origin: str) -> list[tuple[str, int]]:
    """'/a/airfield/00000001.jpg 0' lines -> (relative path, label) in list order."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                relative, label = line.rsplit(maxsplit=1)
                rows.append((relative, int(label)))
            except ValueError as err:
                raise LayoutError(f"{origin}:{number}: expected '<relative path> <label>', got {line!r}") from err
    return rows


def read_categories(root: Path) -> list[str]:
    path = root / CATEGORIES_FILE
    if not path.is_file():
        raise LayoutError(f"{path}: not found; a Places365 root holds {CATEGORIES_FILE} (from {FILELIST_ARCHIVE})")
    return parse_categories(path.read_text(), str(path))


def printable(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (which Python keeps as surrogate escapes) become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def key_for(relative: str) -> str:
    """'/c/coast/00000001.jpg' -> 'c__coast__00000001' (WebDataset splits keys at the first dot)."""
    stem = printable(relative).strip("/").rsplit(".", 1)[0]
    return stem.replace("/", "__").replace(".", "_")


def read_split(root: Path | str, split: str) -> list[Entry]:
    """Entries of one split of an extracted copy, in file-list order."""
    root = Path(root)
    path = root / SPLIT_LISTS[split]
    if not path.is_file():
        raise LayoutError(f"{path}: not found; a Places365 root holds {SPLIT_LISTS[split]} (from {FILELIST_ARCHIVE})")
    folder = image_dir(root, split)
    return [Entry(key_for(rel), folder / rel.lstrip("/"), rel, label) for rel, label in parse_split_list(path.read_text(), str(path))]


def write_layout(root: Path, categories: list[str], train: list[tuple[str, int]], val: list[tuple[str, int]]) -> None:
    """Write the category and split lists for images already placed under root."""
    (root / CATEGORIES_FILE).write_text("".join(f"{name} {i}\n" for i, name in enumerate(categories)))
    for split, rows in (("train", train), ("val", val)):
        (root / SPLIT_LISTS[split]).write_text("".join(f"{rel} {label}\n" for rel, label in rows))
