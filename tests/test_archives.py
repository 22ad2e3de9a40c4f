"""The official Places365 downloads (both layouts) and other sources, read in place into shards."""
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit_inpaint.data import archives, sharding, shards, sources
from maskgit_inpaint.data.manifest import index_path

from conftest import kill_stage_at_first_checkpoint, run_stage, write_tiny_params

CATEGORIES = ["/a/airfield", "/b/beach", "/c/canyon"]


def _encoded(seed: int, size=(40, 40), mode="RGB", fmt="JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _truncated_png(seed: int) -> bytes:
    whole = _encoded(seed, fmt="PNG")
    return whole[: len(whole) // 2]


def _tar(path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)  # added as named: '../' included, as a hostile archive would
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def _train_images() -> dict[str, tuple[bytes, int]]:
    """Relative path in the train list -> (bytes, label): six good images in odd formats, two broken."""
    return {
        "/a/airfield/00000001.jpg": (_encoded(1), 0),
        "/a/airfield/00000002.jpg": (_encoded(2, mode="L"), 0),  # grayscale
        "/b/beach/00000001.jpg": (_encoded(3, mode="CMYK"), 1),
        "/b/beach/00000002.jpg": (b"\xff\xd8 this is not a jpeg", 1),  # corrupt
        "/b/beach/00000003.png": (_encoded(4, size=(60, 40), fmt="PNG"), 1),
        "/c/canyon/00000001.png": (_truncated_png(5), 2),
        "/c/canyon/00000002.jpg": (_encoded(6, size=(32, 32)), 2),
        "/c/canyon/00000003.jpg": (_encoded(7, size=(50, 70)), 2),
    }


def _val_images() -> dict[str, tuple[bytes, int]]:
    return {f"Places365_val_{i:08d}.jpg": (_encoded(100 + i), i % 3) for i in range(1, 5)}


def make_file_list_downloads(folder) -> None:
    """filelist_places365-standard.tar + train_256_places365standard.tar + val_256.tar, as the site serves them."""
    folder.mkdir(parents=True)
    train, val = _train_images(), _val_images()
    lists = {
        "categories_places365.txt": "".join(f"{c} {i}\n" for i, c in enumerate(CATEGORIES)),
        # one more line than the archive holds: listed but absent
        "places365_train_standard.txt": "".join(f"{r} {lab}\n" for r, (_, lab) in train.items()) + "/a/airfield/00000099.jpg 0\n",
        "places365_val.txt": "".join(f"{r} {lab}\n" for r, (_, lab) in val.items()),
    }
    _tar(folder / "filelist_places365-standard.tar", {k: v.encode() for k, v in lists.items()})
    _tar(folder / "train_256_places365standard.tar",
         {f"data_256{r}": data for r, (data, _) in train.items()} | {"../../evil.jpg": _encoded(9)},
         links=("data_256/a/airfield/link.jpg",))
    _tar(folder / "val_256.tar", {f"val_256/{r}": data for r, (data, _) in val.items()})


def make_easyformat_download(folder) -> None:
    """places365standard_easyformat.tar: places365_standard/{train,val}/<category>/..."""
    folder.mkdir(parents=True)
    members = {f"places365_standard/train/{r.split('/')[2]}/{r.rsplit('/', 1)[1]}": data
               for r, (data, _) in _train_images().items()}
    members |= {f"places365_standard/val/{CATEGORIES[lab].split('/')[2]}/{r}": data for r, (data, lab) in _val_images().items()}
    members |= {"places365_standard/train.txt": b"an index the reader does not need\n",
                "places365_standard/../../evil.jpg": _encoded(9)}
    _tar(folder / "places365standard_easyformat.tar", members)


def _shard(project, source, **data):
    write_tiny_params(project / "params.yaml", data={"source": str(source), **data})
    return run_stage("shard", project)


def _samples(project, split):
    return list(shards.dataset(shards.shard_urls(project / "data/shards", split), None))


@pytest.mark.parametrize("make, layout", [(make_file_list_downloads, "Places365 archives"),
                                          (make_easyformat_download, "class-folder archive")])
def test_official_downloads_shard_in_place_with_rejects_listed(tmp_path, make, layout):
    make(tmp_path / "places365")
    project = tmp_path / "project"
    project.mkdir()
    done = _shard(project, tmp_path / "places365")
    assert done.returncode == 0, done.stderr
    assert layout in done.stdout and "read in place" in done.stdout
    manifest = json.loads((project / "data/shards/manifest.json").read_text())
    assert [c.rsplit("/", 1)[-1] for c in manifest["categories"]] == ["airfield", "beach", "canyon"]
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    reasons = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in train["rejected"]}
    assert "cannot decode" in reasons["00000002.jpg"] and "cannot decode" in reasons["00000001.png"]
    assert "unsafe member name" in reasons["evil.jpg"]
    assert train["count"] == 6 and val["count"] == 4
    got = _samples(project, "train")
    assert all(s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.uint8 for s in got)
    assert sorted((s["cls"], "/".join(s["__key__"].split("__")[-2:])) for s in got) == [
        (0, "airfield/00000001"), (0, "airfield/00000002"), (1, "beach/00000001"), (1, "beach/00000003"),
        (2, "canyon/00000002"), (2, "canyon/00000003")]
    gray = next(s["image"] for s in _samples(project, "train") if s["__key__"].endswith("airfield__00000002"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # grayscale -> equal RGB channels
    assert sorted(s["cls"] for s in _samples(project, "val")) == [0, 1, 1, 2]
    assert not any(project.rglob("evil.jpg")) and not (tmp_path / "evil.jpg").exists()
    assert not (project / "checkpoints/shard").exists()  # the work folder is gone once the out is in place


def test_file_list_archives_list_missing_and_link_members(tmp_path):
    make_file_list_downloads(tmp_path / "dl")
    source = sources.open_source(tmp_path / "dl", 0.1, 0)
    reasons = {row["path"]: row["reason"] for row in source.rejected["train"]}
    assert reasons["/a/airfield/00000099.jpg"] == "listed in places365_train_standard.txt but not in train_256_places365standard.tar"
    assert "not a regular file" in reasons["data_256/a/airfield/link.jpg"]
    assert [e.label for e in source.splits["val"]] == [1, 2, 0, 1]  # from places365_val.txt
    first = source.splits["train"][0]
    with first.path.open("rb") as fh:
        assert archives.read_range(fh, *first.span, first.path, first.relative) == _train_images()[first.relative][0]


def test_a_truncated_archive_names_the_member(tmp_path):
    make_file_list_downloads(tmp_path / "dl")
    train_tar = tmp_path / "dl/train_256_places365standard.tar"
    names = tarfile.open(train_tar).getnames()
    cut = archives.index(train_tar).members[f"data_256{list(_train_images())[3]}"]
    train_tar.write_bytes(train_tar.read_bytes()[: cut.offset + cut.size // 2])
    with pytest.raises(archives.ArchiveError, match=r"truncated.*'data_256/b/beach/00000002.jpg'.*download it again"):
        archives.index(train_tar)
    project = tmp_path / "project"
    project.mkdir()
    done = _shard(project, tmp_path / "dl")
    assert done.returncode != 0 and "train_256_places365standard.tar: truncated" in done.stderr
    assert not (project / "data/shards").exists() and len(names) > 4


def test_a_compressed_archive_says_to_decompress(tmp_path):
    path = tmp_path / "images.tar"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("train/a/x.jpg"))
    with pytest.raises(archives.ArchiveError, match="gzip-compressed.*decompress it"):
        archives.index(path)


def test_extracted_class_folders_and_seeded_subsets(tmp_path):
    for split, count in (("train", 6), ("val", 2)):
        for category in ("lake", "bog/indoor"):
            folder = tmp_path / split / category
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(_encoded(i))
    source = sources.open_source(tmp_path, 0.1, 0)
    assert source.categories == ["bog/indoor", "lake"] and source.description == "class folders, extracted"
    assert len(source.splits["train"]) == 12 and {e.label for e in source.splits["val"]} == {0, 1}
    entries = source.splits["train"]
    a, b, other = (sources.subset(entries, 5, seed) for seed in (3, 3, 4))
    assert a == b and a != other and len(a) == 5
    assert [entries.index(e) for e in a] == sorted(entries.index(e) for e in a)  # source order kept
    assert sources.subset(entries, None, 3) == entries == sources.subset(entries, 100, 3)


def test_worker_pool_writes_the_same_shards_as_one_process(tmp_path):
    make_easyformat_download(tmp_path / "dl")
    entries = sources.open_source(tmp_path / "dl", 0.1, 0).splits["train"]
    jobs = sharding.plan("train", entries, max_count=3, min_shards=2)
    encoding = sharding.Encoding(32, 8, 90)
    one = sharding.write_shards(jobs, tmp_path / "one", encoding, workers=0)
    pool = sharding.write_shards(jobs, tmp_path / "pool", encoding, workers=2)
    assert one == pool and len(one) == 3
    for path in [Path(r.name) for r in one] + [index_path(r.name) for r in one]:
        assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "pool" / path).read_bytes()
    assert sum(r.count for r in one) == 6 and all(".tmp" not in p.name for p in (tmp_path / "pool").iterdir())


def test_a_killed_shard_stage_resumes_to_identical_shards(tmp_path, monkeypatch):
    make_file_list_downloads(tmp_path / "dl")
    runs = {}
    for name in ("whole", "killed"):
        project = tmp_path / name
        project.mkdir()
        write_tiny_params(project / "params.yaml", data={"source": str(tmp_path / "dl"), "workers": 0, "shard_max_count": 1})
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        if name == "killed":
            kill_stage_at_first_checkpoint("shard", project, env, project / "checkpoints/shard/train-000000.tar")
            assert not (project / "data/shards").exists() and (project / "checkpoints/shard/train-000000.tar").is_file()
        done = run_stage("shard", project, env)
        assert done.returncode == 0, done.stderr
        assert ("resuming" in done.stdout) == (name == "killed")
        runs[name] = {p.name: p.read_bytes() for p in sorted((project / "data/shards").iterdir())}
    assert runs["whole"] == runs["killed"] and len(runs["whole"]) > 5


def test_the_archive_index_is_kept_until_the_archive_changes(tmp_path):
    make_easyformat_download(tmp_path / "dl")
    archive, cache = tmp_path / "dl/places365standard_easyformat.tar", tmp_path / "cache"
    first = archives.index(archive, cache)
    assert archives.index(archive, cache) == first and len(list(cache.iterdir())) == 1
    stat = archive.stat()
    archive.write_bytes(b"\0" * stat.st_size)  # same size and date: the kept index answers, the tar is not read
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert archives.index(archive, cache).members == first.members
    make_easyformat_download(tmp_path / "again")  # a new download: size or date differ, so it is indexed afresh
    os.replace(tmp_path / "again/places365standard_easyformat.tar", archive)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert archives.index(archive, cache).members == first.members and len(list(cache.iterdir())) == 1


def test_file_names_that_collide_as_keys_or_are_not_utf8_lose_no_image(tmp_path):
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    names = ["x.jpg", "x.png", "x_2.jpg", "a/b.jpg", "a__b.jpg", "ünï code.jpg", os.fsdecode(b"bad\xffname.jpg")]
    for i, name in enumerate(names):  # image i is flat grey 30 * i, so every image is told apart after reading
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(photos / name, format="PNG")
    source = sources.open_source(photos, 0.3, seed=0)
    entries = source.splits["train"] + source.splits["val"]
    assert len(entries) == 7 and len({e.key for e in entries}) == 7
    assert {e.key for e in entries} >= {"x", "x_2", "x_3", "a__b", "a__b_2", "bad\\xffname"}
    encoding = sharding.Encoding(16, 1, None)
    jobs = [job for split in ("train", "val") for job in sharding.plan(split, source.splits[split], 100, 1)]
    sharding.write_shards(jobs, tmp_path / "shards", encoding, workers=0)
    samples = list(shards.dataset([str(tmp_path / "shards" / job.name) for job in jobs], None))
    assert sorted(int(s["image"][0, 0, 0]) for s in samples) == [30 * i for i in range(7)]


def test_a_broken_link_among_photos_is_rejected_with_its_target_not_skipped(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("one.jpg", "two.jpg"):
        (photos / name).write_bytes(_encoded(len(name)))
    (photos / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    source = sources.open_source(photos, 0.4, seed=0)
    jobs = [job for split in ("train", "val") for job in sharding.plan(split, source.splits[split], 100, 1)]
    built = sharding.write_shards(jobs, tmp_path / "shards", sharding.Encoding(32, 1, None), workers=0)
    assert sum(r.count for r in built) == 2
    assert [row.model_dump() for r in built for row in r.rejected] == [
        {"path": "gone.jpg", "reason": f"broken link to {tmp_path / 'moved-away.jpg'}"}]
