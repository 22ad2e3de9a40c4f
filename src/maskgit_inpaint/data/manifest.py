"""The shards folder's format: its manifest (where the images came from, per split what was written) and the shard indexes.

sharding.py builds the shards it is made of, the shard stage writes it, shards.load_manifest
reads it back. Writer and reader share only this module, so an edit to how shards are
written reruns the shard stage alone. No torch here: the shard stage and its worker
processes import this.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from maskgit_inpaint.data.places365 import SPLITS
from maskgit_inpaint.data.records import StoredRecord

MANIFEST = "manifest.json"
INDEX_FIELDS = ("keys", "exts", "starts", "sizes", "labels")  # an index's per-sample columns (starts: byte offsets of image data)


def index_path(shard: Path | str) -> Path:
    """The index beside a shard: train-000003.tar -> train-000003.idx."""
    return Path(shard).with_suffix(".idx")


class RejectedRow(StoredRecord):
    """One image that is in no shard, and why."""

    path: str  # as the source names it: its file list's entry, its archive member, its path under the folder
    reason: str


class ShardRecord(StoredRecord):
    name: str  # e.g. train-000003.tar, beside the manifest
    sha256: str


class BuiltShard(StoredRecord):
    """One shard as sharding.build_shard wrote it; also kept as `<name>.json` beside it, so a resumed run knows it."""

    name: str
    count: int  # images in it
    rejected: list[RejectedRow]  # images of its slice that could not be encoded
    sha256: str


class SplitManifest(StoredRecord):
    count: int  # images in the split's shards
    rejected: list[RejectedRow]  # found by the source (listed but missing, unsafe members) and while encoding
    shards: list[ShardRecord]

    @classmethod
    def of(cls, built: list[BuiltShard], rejected_by_source: list[RejectedRow]) -> SplitManifest:
        """The split made of the shards `built`, in their order."""
        return cls(count=sum(shard.count for shard in built),
                   rejected=[*rejected_by_source, *(row for shard in built for row in shard.rejected)],
                   shards=[ShardRecord(name=shard.name, sha256=shard.sha256) for shard in built])


class ShardManifest(StoredRecord):
    source: str  # data.source as read: the embedded sample's folder or a Places365 root, archive or image folder
    layout: str  # how the source was read (sources.Source.description)
    image_size: int  # every image in the shards is image_size x image_size
    categories: list[str]  # class names by index; empty without classes
    splits: dict[str, SplitManifest]  # train and val

    @model_validator(mode="after")
    def _every_split(self) -> ShardManifest:
        if sorted(self.splits) != sorted(SPLITS):
            raise ValueError(f"splits must be {list(SPLITS)}, not {sorted(self.splits)}")
        return self

    @property
    def rejected_count(self) -> int:
        return sum(len(split.rejected) for split in self.splits.values())
