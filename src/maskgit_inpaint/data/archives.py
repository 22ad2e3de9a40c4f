"""Plain tar archives read in place: an index of their members, and byte ranges read back.

Nothing is extracted: a member is read at its offset, so a 1.8M-image archive needs
no second copy on disk, and a member name like '../../etc/passwd' is only ever a
name (it is rejected and listed, never written anywhere).
"""
from __future__ import annotations

import gzip
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from maskgit_inpaint.io import atomic_file

# Leading bytes of the compressions tarfile would otherwise read as a stream.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class ArchiveError(ValueError):
    """The archive cannot be read as a whole (compressed, truncated, not a tar)."""


@dataclass(frozen=True, slots=True)  # millions of them for Places365: no per-object dict
class Member:
    offset: int  # where its bytes start in the archive
    size: int


@dataclass
class Index:
    path: Path
    members: dict[str, Member]  # regular files by normalised name, in archive order
    rejected: list[dict]  # {"path", "reason"} of members that are not plain, safe files


def safe_name(name: str) -> str | None:
    """The member's name without './' and doubled slashes; None when absolute or climbing out with '..'."""
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../"):
        return None
    return normal


def _check_plain_tar(path: Path) -> None:
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive")
    with path.open("rb") as fh:
        head = fh.read(6)
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise ArchiveError(f"{path}: a {kind}-compressed archive; decompress it to a plain .tar first "
                               "(members are read in place by offset, which a compressed stream does not allow)")


def index(path: Path | str, cache_dir: Path | None = None) -> Index:
    """Every member's name, offset and size, from the headers (data is skipped, not read).

    The headers are spread through the archive, so a cold scan reads about all of it
    (measured: 4.2 GB in 26 s, 7,700 members/s; 42,000/s from the page cache). With
    `cache_dir` the index is kept there, keyed by the archive's size and mtime, and a
    later run (other image size, a resume) starts from it.
    """
    path = Path(path)
    _check_plain_tar(path)
    if cache_dir is None:
        return _scan(path)
    stat = path.stat()
    cached = cache_dir / f"{path.name}.{stat.st_size}.{stat.st_mtime_ns}.index.json.gz"
    if cached.is_file():
        with gzip.open(cached, "rt") as fh:
            saved = json.load(fh)
        return Index(path, {name: Member(offset, size) for name, offset, size in saved["members"]}, saved["rejected"])
    found = _scan(path)
    for stale in cache_dir.glob(f"{path.name}.*.index.json.gz"):  # an earlier copy of this archive
        stale.unlink()
    with atomic_file(cached) as tmp, gzip.open(tmp, "wt") as fh:
        json.dump({"members": [[n, m.offset, m.size] for n, m in found.members.items()], "rejected": found.rejected}, fh)
    return found


def _scan(path: Path) -> Index:
    total = path.stat().st_size
    members: dict[str, Member] = {}
    rejected: list[dict] = []
    last = None
    try:
        with tarfile.open(path, "r:") as tar, tqdm(desc=f"index {path.name}", unit="member", leave=False) as bar:
            for info in tar:
                last = info
                bar.update()
                name = safe_name(info.name)
                if info.isdir():
                    continue
                if name is None:
                    rejected.append({"path": info.name, "reason": "unsafe member name (absolute or '..'): not read"})
                elif not info.isreg():
                    rejected.append({"path": info.name, "reason": "not a regular file (link or device member): not read"})
                elif info.offset_data + info.size > total:
                    raise ArchiveError(_truncated(path, info.name, total))
                else:
                    members[name] = Member(info.offset_data, info.size)
    except tarfile.ReadError as err:
        if last is not None and last.offset_data + last.size > total:
            raise ArchiveError(_truncated(path, last.name, total)) from err
        where = f"after member {last.name!r}" if last is not None else "at its first header"
        raise ArchiveError(f"{path}: not a readable tar {where} ({err}); download it again") from err
    return Index(path, members, rejected)


def _truncated(path: Path, member: str, total: int) -> str:
    return f"{path}: truncated ({total} bytes): member {member!r} ends past the end of the file; download it again"


def read_text(archive: Index, name: str) -> str:
    """A small text member (a file list) as a string."""
    member = archive.members.get(name)
    if member is None:
        raise ArchiveError(f"{archive.path}: no member {name!r}; is this the right download?")
    with archive.path.open("rb") as fh:
        return read_range(fh, member.offset, member.size, archive.path, name).decode()


def read_range(fh: BinaryIO, offset: int, size: int, path: Path, name: str) -> bytes:
    """`size` bytes at `offset`; a short read means the archive changed or was cut after indexing."""
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise ArchiveError(_truncated(path, name, offset + len(data)))
    return data
