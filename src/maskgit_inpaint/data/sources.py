"""Where the images come from: every layout `data.source` can point at, read into train/val entries.

- a folder holding the official Places365-Standard downloads, read in place:
  `places365standard_easyformat.tar`, or `filelist_places365-standard.tar` with
  `train_256_places365standard.tar` + `val_256.tar` (or the `_large` pair);
- any plain .tar with train/<category>/... and val/<category>/... (easyformat's layout);
- an extracted copy: the file-list layout (categories_places365.txt, data_256/, val_256/)
  or class folders (train/<category>/..., val/<category>/...);
- any other folder of images: no classes, val chosen by the seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from maskgit_inpaint.data import archives, image_folder, places365
from maskgit_inpaint.data.places365 import SPLITS, Entry, LayoutError


@dataclass
class Source:
    description: str  # how the source was read, for the stage summary
    categories: list[str]  # class names by index; empty without classes
    splits: dict[str, list[Entry]]
    rejected: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})  # found before decoding


def open_source(root: Path, folder_val_fraction: float, seed: int, index_cache: Path | None = None) -> Source:
    """Read `root` in the first layout it matches (see the module docstring); archive indexes are kept in index_cache."""
    source = _read_layout(root, folder_val_fraction, seed, index_cache)
    return replace(source, splits=unique_keys(source.splits))


def unique_keys(splits: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
    """Entries whose keys collide (x.jpg and x.png, a/b.jpg and a__b.jpg) get a numbered key (x, x_2), in order.

    Two samples with one key in a shard would read back as one image (WebDataset groups
    files by key), and tokens and results are stored by key: so no image is silently
    lost or mixed up, within a split or across them.
    """
    taken = {entry.key for entries in splits.values() for entry in entries}
    if len(taken) == sum(len(entries) for entries in splits.values()):
        return splits  # the usual case, Places365 included
    seen: set[str] = set()
    unique: dict[str, list[Entry]] = {}
    for split, entries in splits.items():
        unique[split] = []
        for entry in entries:
            if entry.key in seen:
                n = 2
                while f"{entry.key}_{n}" in taken:
                    n += 1
                entry = replace(entry, key=f"{entry.key}_{n}")
                taken.add(entry.key)
            seen.add(entry.key)
            unique[split].append(entry)
    return unique


def _read_layout(root: Path, folder_val_fraction: float, seed: int, index_cache: Path | None) -> Source:
    if root.is_file():
        return _class_folder_archive(root, index_cache)
    if (root / places365.EASYFORMAT_ARCHIVE).is_file():
        return _class_folder_archive(root / places365.EASYFORMAT_ARCHIVE, index_cache)
    if (root / places365.FILELIST_ARCHIVE).is_file():
        return _file_list_archives(root, index_cache)
    if places365.is_places365_root(root):
        return Source("Places365 file lists, extracted", places365.read_categories(root),
                      {split: places365.read_split(root, split) for split in SPLITS})
    if all((root / split).is_dir() for split in SPLITS):
        return _class_folders(root)
    splits = image_folder.read_splits(root, folder_val_fraction, seed)
    return Source("image folder, no classes", [], splits)


def subset(entries: list[Entry], limit: int | None, seed: int) -> list[Entry]:
    """A seeded random choice of `limit` entries, kept in source order (all of them when limit is None)."""
    if limit is None or limit >= len(entries):
        return entries
    chosen = np.sort(np.random.default_rng(seed).choice(len(entries), limit, replace=False))
    return [entries[i] for i in chosen]


def _by_class_folder(names: list[str]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """'train/<category...>/<file>' names -> sorted categories and, per split, (name, category index) pairs."""
    rows: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) >= 3 and parts[0] in rows and PurePosixPath(name).suffix.lower() in image_folder.IMAGE_SUFFIXES:
            rows[parts[0]].append((name, places365.printable("/".join(parts[1:-1]))))
    categories = sorted({category for split in SPLITS for _, category in rows[split]})
    labels = {c: i for i, c in enumerate(categories)}
    return categories, {split: [(name, labels[c]) for name, c in rows[split]] for split in SPLITS}


def _class_folders(root: Path) -> Source:
    names = sorted(p.relative_to(root).as_posix() for split in SPLITS for p in (root / split).rglob("*")
                   if image_folder.is_listed(p))
    categories, rows = _by_class_folder(names)
    splits = {split: [Entry(places365.key_for(name.split("/", 1)[1]), root / name, places365.printable(name), label)
                      for name, label in rows[split]]
              for split in SPLITS}
    _require_images(splits, root, "train/<category>/<image> and val/<category>/<image>")
    return Source("class folders, extracted", categories, splits)


def _class_folder_archive(path: Path, index_cache: Path | None) -> Source:
    archive = archives.index(path, index_cache)
    # easyformat wraps everything in one top folder (places365_standard/); look through it.
    tops = {name.split("/", 1)[0] for name in archive.members}
    prefix = f"{tops.pop()}/" if len(tops) == 1 and not {"train", "val"} & tops else ""
    names = [name[len(prefix):] for name in archive.members if name.startswith(prefix)]
    categories, rows = _by_class_folder(names)
    splits = {split: [Entry(places365.key_for(name.split("/", 1)[1]), path, places365.printable(prefix + name), label,
                            _span(archive.members[prefix + name])) for name, label in rows[split]]
              for split in SPLITS}
    _require_images(splits, path, f"{prefix}train/<category>/<image> and {prefix}val/<category>/<image> members")
    return Source(f"class-folder archive {path.name}, read in place", categories, splits, _rejected_by_split(archive.rejected))


def _file_list_archives(root: Path, index_cache: Path | None) -> Source:
    lists = archives.index(root / places365.FILELIST_ARCHIVE)
    text = {name.rsplit("/", 1)[-1]: name for name in lists.members}  # the lists may sit in a folder

    def read_list(file: str) -> str:
        if file not in text:
            raise LayoutError(f"{lists.path}: has no {file}; download {places365.FILELIST_ARCHIVE} again")
        return archives.read_text(lists, text[file])

    categories = places365.parse_categories(read_list(places365.CATEGORIES_FILE), places365.CATEGORIES_FILE)
    splits, rejected, used = {}, {}, []
    for split in SPLITS:
        found = [root / name for name in places365.SPLIT_ARCHIVES[split] if (root / name).is_file()]
        if not found:
            raise LayoutError(f"{root}: {places365.FILELIST_ARCHIVE} is here but not the {split} images "
                              f"({' or '.join(places365.SPLIT_ARCHIVES[split])}); download one into this folder")
        archive = archives.index(found[0], index_cache)
        used.append(found[0].name)
        rows = places365.parse_split_list(read_list(places365.SPLIT_LISTS[split]), places365.SPLIT_LISTS[split])
        folder = next((d for d in places365.SPLIT_DIRS[split] if f"{d}/{rows[0][0].lstrip('/')}" in archive.members),
                      places365.SPLIT_DIRS[split][0]) if rows else ""
        splits[split], rejected[split] = [], list(archive.rejected)
        for relative, label in rows:
            member = archive.members.get(f"{folder}/{relative.lstrip('/')}")
            if member is None:
                rejected[split].append({"path": relative, "reason": f"listed in {places365.SPLIT_LISTS[split]} but not in {found[0].name}"})
            else:
                splits[split].append(Entry(places365.key_for(relative), found[0], relative, label, _span(member)))
    return Source(f"Places365 archives {' + '.join(used)} with {places365.FILELIST_ARCHIVE}, read in place",
                  categories, splits, rejected)


def _span(member: archives.Member) -> tuple[int, int]:
    return member.offset, member.size


def _rejected_by_split(rejected: list[dict]) -> dict[str, list[dict]]:
    """Unreadable members of a class-folder archive, filed under the split their name starts with (else train)."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in rejected:
        out["val" if "/val/" in f"/{row['path']}" else "train"].append(row)
    return out


def _require_images(splits: dict[str, list[Entry]], where: Path, layout: str) -> None:
    empty = [split for split in SPLITS if not splits[split]]
    if empty:
        raise LayoutError(f"{where}: no {' or '.join(empty)} images; expected {layout}")
