"""The reading side: shards sliced by their index or parsed in memory, split by DDP process and loader worker, throughput metered."""
import functools
import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torchvision.io import decode_image

from maskgit_inpaint.data import sharding, shards
from maskgit_inpaint.data.manifest import INDEX_FIELDS, index_path
from maskgit_inpaint.data.places365 import Entry, key_for


@pytest.fixture(scope="module")
def shard_urls(tmp_path_factory) -> list[str]:
    """Four shards of 6 images; the last image has a name too long for a plain tar header."""
    root = tmp_path_factory.mktemp("reading")
    entries = []
    for i in range(24):
        relative = f"{'deep/' * 25 if i == 23 else ''}img{i:03d}.png"
        path = root / "images" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), i * 10, dtype=np.uint8)).save(path)
        entries.append(Entry(key_for(relative), path, relative, i % 3))
    jobs = sharding.plan("train", entries, max_count=6, min_shards=4)
    sharding.write_shards(jobs, root / "shards", sharding.Encoding(16, 1, None), workers=0)
    return [str(root / "shards" / job.name) for job in jobs]


def test_samples_come_back_as_written_long_names_included(shard_urls):
    samples = list(shards.dataset(shard_urls, shuffle_seed=None))
    assert len(samples) == 24 and len(samples[-1]["__key__"]) > 100  # a PAX header carried the long name
    for i, sample in enumerate(samples):
        assert sample["cls"] == i % 3 and sample["image"].dtype == torch.uint8
        assert sample["image"].shape == (3, 16, 16) and int(sample["image"][0, 0, 0]) == i * 10
    images, keys = shards.load_split(shard_urls)
    assert keys == [s["__key__"] for s in samples] and images.shape == (24, 3, 16, 16)
    assert images[1, 0, 0, 0].item() == pytest.approx(10 / 127.5 - 1)


def test_the_index_beside_each_shard_points_at_its_images_and_reads_as_the_tar_does(shard_urls, tmp_path):
    for url in shard_urls:
        index, data = json.loads(index_path(url).read_text()), Path(url).read_bytes()
        with tarfile.open(url) as tar:  # tarfile's own reading, independent of ours; nothing is extracted to disk
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        rows = list(zip(*(index[field] for field in INDEX_FIELDS)))
        assert index["shard_bytes"] == len(data) and len(members) == 2 * len(rows) == 12
        for key, ext, start, size, label in rows:
            assert data[start:start + size] == members[f"{key}.{ext}"] and members[f"{key}.cls"] == str(label).encode()
    unindexed = []  # the same shards without their index: read by parsing the tar
    for url in shard_urls:
        (tmp_path / Path(url).name).write_bytes(Path(url).read_bytes())
        unindexed.append(str(tmp_path / Path(url).name))
    by_index, by_parse = list(shards.dataset(shard_urls, None)), list(shards.dataset(unindexed, None))
    assert [(s["__key__"], s["cls"]) for s in by_index] == [(s["__key__"], s["cls"]) for s in by_parse]
    assert len(by_index) == 24 and all(torch.equal(a["image"], b["image"]) for a, b in zip(by_index, by_parse))


def test_a_stale_or_damaged_index_names_the_file_and_the_fix(shard_urls, tmp_path):
    shard, index = tmp_path / "train-000000.tar", tmp_path / "train-000000.idx"
    data = Path(shard_urls[0]).read_bytes()
    shard.write_bytes(data + bytes(512))  # the shard changed after its index was written
    index.write_bytes(index_path(shard_urls[0]).read_bytes())
    stale = f"{shard}: {len(data) + 512} bytes, but its index train-000000.idx was written for a shard of {len(data)}"
    with pytest.raises(shards.ShardFormatError, match=re.escape(stale) + ".*dvc repro shard"):
        list(shards.dataset([str(shard)], shuffle_seed=None))
    for damaged in ('{"shard_bytes": 3', '{"shard_bytes": 3}'):  # cut short; without its columns
        index.write_text(damaged)
        with pytest.raises(shards.ShardFormatError, match=re.escape(f"{index}: not a shard index") + ".*dvc repro shard"):
            list(shards.dataset([str(shard)], shuffle_seed=None))


def test_a_damaged_or_cut_shard_names_the_file_and_the_fix(shard_urls, tmp_path):
    data = open(shard_urls[0], "rb").read()
    damaged, cut = tmp_path / "damaged.tar", tmp_path / "cut.tar"
    damaged.write_bytes(data[:124] + b"not octal!!!" + data[136:])
    cut.write_bytes(data[: len(data) // 2])
    for path, reason in ((damaged, "damaged tar header at byte 0"), (cut, "cut short")):
        with pytest.raises(shards.ShardFormatError, match=f"{path}: {reason}.*dvc repro shard"):
            list(shards.dataset([str(path)], shuffle_seed=None))


def test_ddp_processes_and_loader_workers_read_disjoint_shards(shard_urls, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([s["__key__"] for s in shards.dataset(shard_urls, shuffle_seed=0)])
    assert len(seen[0]) == len(seen[1]) == 12 and not set(seen[0]) & set(seen[1])
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # spawn: fresh workers, untouched by the threads that earlier in-process Prefect and MLflow runs leave in pytest
    loader = wds.WebLoader(shards.dataset(shard_urls, shuffle_seed=0), batch_size=None, num_workers=2,
                           multiprocessing_context="spawn")
    keys = [s["__key__"] for s in loader]  # one epoch, read to the end by two workers
    assert sorted(keys) == sorted(seen[0] + seen[1])  # every image once, none twice


def test_metered_batches_report_throughput_and_waiting():
    def slow():
        while True:
            yield torch.zeros(4, 3, 2, 2)

    metered = shards.MeteredBatches(slow())
    for _ in range(5):
        next(metered)
    report = metered.throughput()
    assert metered.images == 20 and report["train_images_per_s"] > 0 and 0 < report["input_wait_share"] <= 1


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_shard(path, images: list[np.ndarray]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i, pixels in enumerate(images):
            sink.write({"__key__": f"img{i:03d}", "jpg": _jpeg(pixels), "cls": b"0"})
    return str(path)


def test_jpeg_batches_hold_each_image_in_its_own_slot(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(7)]
    url = _write_shard(tmp_path / "jpeg.tar", images)
    batches = list(shards.iterate_split([url], batch_size=3))
    assert [len(keys) for _, keys in batches] == [3, 3, 1]
    decoded = torch.cat([images for images, _ in batches])  # (7, 3, 24, 24) in [-1, 1]
    for i, pixels in enumerate(images):  # torchvision's decoder, independent of the loader's
        reference = decode_image(torch.frombuffer(bytearray(_jpeg(pixels)), dtype=torch.uint8))
        assert np.array_equal(shards.as_uint8(decoded[i:i + 1])[0], reference.permute(1, 2, 0).numpy())


def test_an_image_of_another_size_in_a_batch_is_named(tmp_path):
    images = [np.zeros((24, 24, 3), np.uint8)] * 2 + [np.zeros((32, 24, 3), np.uint8)]
    url = _write_shard(tmp_path / "mixed.tar", images)
    with pytest.raises(shards.ShardFormatError, match=r"mixed.tar: image img002 is 24x32, the batch's first 24x24"):
        list(shards.iterate_split([url], batch_size=3))


def test_a_jpeg_with_libjpeg_warnings_reads_as_its_clean_twin(capfd):
    clean = _jpeg(np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    stray = clean[:-2] + b"\x00\x11\x22" + clean[-2:]  # "extraneous bytes before marker 0xd9": PIL and sharding accept it
    slots = np.zeros((2, 24, 24, 3), np.uint8)
    shards.decode_pixels(stray, "jpg", out=slots[1])
    assert np.array_equal(slots[1], shards.decode_pixels(clean, "jpg")) and not slots[0].any()
    assert "Corrupt JPEG" not in capfd.readouterr().err  # decoded in the fast path, not warned about per image


def test_in_process_batches_cover_every_epoch_once_and_resume_from_the_seed(shard_urls):
    def take(count: int, skip: int = 0) -> list[torch.Tensor]:
        stream = shards.train_batches(shard_urls, 4, seed=0, num_workers=0, skip=skip)
        batches = [next(stream) for _ in range(count)]
        stream.close()
        return batches

    batches = take(12)  # two epochs of 24 images
    epochs = [sorted(torch.cat(batches[e * 6:(e + 1) * 6])[:, 0, 0, 0].tolist()) for e in (0, 1)]
    assert epochs[0] == epochs[1] == [i * 10 for i in range(24)]  # image i is flat grey 10 * i
    assert not torch.equal(torch.cat(batches[:6]), torch.cat(batches[6:]))  # each epoch reshuffles
    assert all(torch.equal(x, y) for x, y in zip(take(5, skip=7), batches[7:]))  # a resumed stream goes on alike


def test_the_shuffle_buffer_mixes_shards_and_loses_or_repeats_nothing():
    shards_of_100 = [[(shard, i) for i in range(100)] for shard in range(10)]  # (shard, position) stand in for samples

    def shuffled(size: int, seed: int) -> list:
        return [sample for block in shards._shuffle_buffer(iter(shards_of_100), size, seed) for sample in block]

    everything = sorted(s for block in shards_of_100 for s in block)
    for size in (150, 5000):  # smaller than the stream; larger: a permutation of all of it
        assert sorted(shuffled(size, 0)) == everything
    assert shuffled(150, 0) == shuffled(150, 0) != shuffled(150, 1)  # the seed decides the order
    first = shuffled(150, 0)[:100]
    assert len({shard for shard, _ in first}) >= 2 and first != sorted(first)  # the first batches mix shards
    late = shuffled(150, 0)[500:600]  # a sample lingers in the buffer for a while: old and new shards mix
    assert len({shard for shard, _ in late}) >= 3


def test_the_batch_pipeline_pickles_for_spawned_loader_workers(shard_urls):
    """macOS and Windows start DataLoader workers by spawning: each gets the pipeline pickled."""
    pipeline = shards._samples(shard_urls, shuffle_seed=0).compose(
        functools.partial(shards._image_batches, batch_size=4, short_last=False, with_keys=False))
    assert torch.equal(next(iter(pickle.loads(pickle.dumps(pipeline)))), next(iter(pipeline)))


def test_a_foreign_shard_with_folders_and_long_names_reads_by_member(tmp_path):
    long_folder = "d" * 120  # longer than a plain tar header holds: the folder gets a PAX header of its own
    path = tmp_path / "foreign.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo(long_folder)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, body in (("k.jpg", _jpeg(np.zeros((8, 8, 3), np.uint8))), ("k.cls", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    [sample] = shards.dataset([str(path)], shuffle_seed=None)
    assert sample["__key__"] == "k" and sample["cls"] == 2
