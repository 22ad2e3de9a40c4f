"""Writing WebDataset shards: a plan of shards, built in parallel, each renamed into place when complete.

A shard holds a fixed slice of the (seeded, ordered) entry list, so its bytes depend
only on that slice and the encoding: shards can be built by any worker in any order,
and a killed run resumes by keeping the shards it finished. A shard is written under
`<name>.tmp` and renamed only when complete, next to a `<name>.json` with its count,
rejects and sha256, so a shard that looks complete is complete. Beside each shard goes
its index (`<stem>.idx`, INDEX_FIELDS per sample): where each image lies in the tar and
its class, so readers slice images out of one read of the shard instead of parsing its
headers (shards.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from maskgit_inpaint.data import archives
from maskgit_inpaint.data.images import RejectedImage, prepare_image, read_file
from maskgit_inpaint.data.manifest import INDEX_FIELDS, BuiltShard, RejectedRow, index_path
from maskgit_inpaint.data.places365 import Entry
from maskgit_inpaint.io import atomic_file, sha256_file, write_json

PLAN = "plan.json"  # fingerprint of the plan the shards in a work folder belong to


@dataclass(frozen=True)
class Encoding:
    image_size: int  # shorter side resized to this, then center-cropped square
    min_side: int  # smaller inputs are rejected
    jpeg_quality: int | None  # re-encoded images: JPEG at this quality, or lossless PNG when None


@dataclass(frozen=True)
class ShardJob:
    name: str  # e.g. train-000003.tar
    entries: tuple[Entry, ...]


def plan(split: str, entries: list[Entry], max_count: int, min_shards: int) -> list[ShardJob]:
    """Cut a split into consecutive shards of at most max_count, and at least min_shards when there are enough images."""
    per_shard = max(1, min(max_count, math.ceil(len(entries) / min_shards)))
    return [ShardJob(f"{split}-{i // per_shard:06d}.tar", tuple(entries[i:i + per_shard]))
            for i in range(0, len(entries), per_shard)]


def _read(entry: Entry, handles: dict[Path, BinaryIO]) -> bytes:
    if entry.span is None:
        return read_file(entry.path)
    if entry.path not in handles:
        handles[entry.path] = entry.path.open("rb")
    return archives.read_range(handles[entry.path], *entry.span, entry.path, entry.relative)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member; returns the offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # no clock, owner or umask in the bytes: reruns are identical
    tar.addfile(info, io.BytesIO(data))
    padded = math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return tar.offset - padded  # tar.offset is now past the padded data


def build_shard(job: ShardJob, work_dir: Path, encoding: Encoding) -> BuiltShard:
    """Write one shard and its index into work_dir (temp names, then renames); returns its count, rejects and sha256."""
    final, tmp = work_dir / job.name, work_dir / f"{job.name}.tmp"
    rejected, index, handles = [], {field: [] for field in INDEX_FIELDS}, {}
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for entry in job.entries:
                try:
                    data, ext = prepare_image(_read(entry, handles), encoding.image_size, encoding.min_side, encoding.jpeg_quality)
                except RejectedImage as err:
                    rejected.append(RejectedRow(path=entry.relative, reason=str(err)))
                    continue
                for field, value in zip(INDEX_FIELDS, (entry.key, ext, _add(tar, f"{entry.key}.{ext}", data), len(data), entry.label)):
                    index[field].append(value)
                _add(tar, f"{entry.key}.cls", str(entry.label).encode())  # for WebDataset readers other than ours
    finally:
        for handle in handles.values():
            handle.close()
    result = BuiltShard(name=job.name, count=len(index["keys"]), rejected=rejected, sha256=sha256_file(tmp))
    with atomic_file(index_path(final)) as index_file:  # compact: read once per shard per epoch
        index_file.write_text(json.dumps({"shard_bytes": tmp.stat().st_size, **index}, separators=(",", ":")))
    result.write(work_dir / f"{job.name}.json")
    os.replace(tmp, final)  # last: the shard's presence under its name marks it complete
    return result


def fingerprint(jobs: list[ShardJob], encoding: Encoding) -> str:
    """Changes whenever a shard's bytes could: the encoding, the slices, and the size and date of every archive read."""
    digest = hashlib.sha256(json.dumps(asdict(encoding), sort_keys=True).encode())
    archives_read = set()
    for job in jobs:
        digest.update(job.name.encode())
        for e in job.entries:
            digest.update(f"{e.key}\0{e.path}\0{e.relative}\0{e.label}\0{e.span}\n".encode("utf-8", "surrogateescape"))
            if e.span is not None:
                archives_read.add(e.path)
    for path in sorted(archives_read):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resumable(work_dir: Path, plan_hash: str) -> dict[str, BuiltShard]:
    """Finished shards of an interrupted run of the same plan; anything else in work_dir is cleared."""
    plan_file = work_dir / PLAN
    if plan_file.is_file() and json.loads(plan_file.read_text()).get("fingerprint") == plan_hash:
        for tmp in work_dir.glob("*.tmp"):
            tmp.unlink()
        return {p.stem: BuiltShard.read(p, made_by="shard") for p in work_dir.glob("*.tar.json") if (work_dir / p.stem).is_file()}
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    write_json(plan_file, {"fingerprint": plan_hash})
    return {}


def write_shards(jobs: list[ShardJob], work_dir: Path, encoding: Encoding, workers: int) -> list[BuiltShard]:
    """Build every shard of the plan in work_dir, keeping the finished shards of an interrupted run; results in plan order."""
    done = _resumable(work_dir, fingerprint(jobs, encoding))
    todo = [job for job in jobs if job.name not in done]
    if done:
        print(f"shard: resuming, {len(done)} of {len(jobs)} shards already written in {work_dir}")
    total = sum(len(job.entries) for job in todo)
    with tqdm(total=total, desc="shard", unit="img", leave=False) as bar:
        if workers == 0 or len(todo) <= 1:
            for job in todo:
                done[job.name] = build_shard(job, work_dir, encoding)
                bar.update(len(job.entries))
        else:
            # spawn: fresh interpreters, unaffected by threads or state of the parent process
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(build_shard, job, work_dir, encoding): job for job in todo}
                for future in as_completed(futures):
                    result = future.result()
                    done[result.name] = result
                    bar.update(len(futures[future].entries))
    return [done[job.name] for job in jobs]
