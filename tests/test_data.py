import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit_inpaint import runtime
from maskgit_inpaint.data import images, places365, sample, sharding, shards, tokens
from maskgit_inpaint.data.manifest import MANIFEST, BuiltShard, RejectedRow, ShardManifest, SplitManifest, index_path
from maskgit_inpaint.data.records import StoredRecordError
from maskgit_inpaint.data.scenes import CATEGORIES
from maskgit_inpaint.io import atomic_dir
from stages import extract_tokens as extract_tokens_stage
from stages import sample as sample_stage
from stages import shard as shard_stage

from conftest import run_stage, stage_env, write_tiny_params


def test_sample_is_places365_layout_and_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    counts = sample.generate(a, seed=3, image_size=32, train_per_category=2, val_per_category=1, noise=0.02)
    sample.generate(b, seed=3, image_size=32, train_per_category=2, val_per_category=1, noise=0.02)
    assert counts == sample.SampleCounts(train=2 * len(CATEGORIES), val=len(CATEGORIES), categories=len(CATEGORIES))
    assert places365.read_categories(a) == list(CATEGORIES)
    train = places365.read_split(a, "train")
    val = places365.read_split(a, "val")
    assert train[0].path == a / "data_256/c/coast/00000001.jpg" and train[0].key == "c__coast__00000001"
    assert val[0].path.parent == a / "val_256" and {e.label for e in val} == set(range(len(CATEGORIES)))
    assert all((a / e.path.relative_to(a)).read_bytes() == (b / e.path.relative_to(a)).read_bytes() for e in train + val)
    assert (a / "places365_train_standard.txt").read_text().splitlines()[0] == "/c/coast/00000001.jpg 0"


def test_scenes_have_structure_not_noise():
    from maskgit_inpaint.data.scenes import render

    img = render("/l/lake/natural", 64, 0.02, np.random.default_rng(0)).astype(float)
    # Neighbouring pixels agree far more than random pixels would: structure dominates.
    neighbour = np.abs(np.diff(img, axis=1)).mean()
    shuffled = np.abs(np.diff(np.random.default_rng(1).permutation(img.reshape(-1, 3)), axis=0)).mean()
    assert neighbour < 0.25 * shuffled


def test_prepare_image_resizes_crops_and_passes_jpegs_through(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGBA", (80, 40), (10, 200, 30, 128)).save(wide)
    data, ext = images.prepare_image(wide.read_bytes(), 32)
    assert ext == "png" and Image.open(io.BytesIO(data)).size == (32, 32) and Image.open(io.BytesIO(data)).mode == "RGB"
    exact = tmp_path / "exact.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(exact, quality=90)
    assert images.prepare_image(exact.read_bytes(), 32) == (exact.read_bytes(), "jpg")


def test_shard_stage_rejects_and_counts_bad_files(tiny_project):
    assert run_stage("sample", tiny_project).returncode == 0
    raw = tiny_project / "data/raw"
    entries = places365.read_split(raw, "train")
    entries[0].path.write_bytes(b"this is not a jpeg")  # corrupt
    entries[1].path.write_bytes(entries[1].path.read_bytes()[:200])  # truncated
    entries[2].path.unlink()  # listed but missing
    done = run_stage("shard", tiny_project)
    assert done.returncode == 0, done.stderr
    assert "3 rejected" in done.stdout
    manifest = json.loads((tiny_project / "data/shards/manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert train["count"] == len(entries) - 3
    reasons = {r["path"]: r["reason"] for r in train["rejected"]}
    assert "cannot decode" in reasons[entries[0].relative]
    assert reasons[entries[2].relative] == "file listed but missing"
    assert len(train["shards"]) >= 2  # at least as many shards as loader workers
    assert all(index_path(tiny_project / "data/shards" / s["name"]).is_file() for s in train["shards"])

    images, keys = shards.load_split(shards.shard_urls(tiny_project / "data/shards", "train"))
    assert images.shape == (len(entries) - 3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert keys == [e.key for e in entries[3:]]  # shard order = file-list order
    batch = next(shards.train_batches(shards.shard_urls(tiny_project / "data/shards", "train"), 4, seed=0, num_workers=2))
    assert batch.shape == (4, 3, 32, 32)


def test_not_a_places365_root_names_the_fix(tmp_path):
    with pytest.raises(places365.LayoutError, match="categories_places365.txt"):
        places365.read_categories(tmp_path)


def test_atomic_dir_leaves_the_old_out_when_killed(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_exif_rotated_photographs_are_stored_upright(tmp_path):
    img = Image.new("RGB", (32, 32), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 32, 8))  # red band on top as stored
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    data, ext = images.prepare_image(path.read_bytes(), 32)
    upright = np.asarray(Image.open(io.BytesIO(data)))
    assert ext == "png" and upright[16, 28, 0] > 200 and upright[2, 16, 0] < 50  # the band is now on the right


def test_shards_are_byte_reproducible(tmp_path):
    sample.generate(tmp_path / "raw", seed=0, image_size=32, train_per_category=2, val_per_category=1, noise=0.02)
    entries = places365.read_split(tmp_path / "raw", "train")
    runs = []
    for name in ("a", "b"):
        time.sleep(1.1)  # tar headers carry whole seconds: a later run must still write the same bytes
        jobs = sharding.plan("train", entries, max_count=5, min_shards=2)
        runs.append(sharding.write_shards(jobs, tmp_path / name, sharding.Encoding(32, 1, None), workers=0))
    assert runs[0] == runs[1] and len(runs[0]) >= 2
    assert (tmp_path / "a" / runs[0][0].name).read_bytes() == (tmp_path / "b" / runs[0][0].name).read_bytes()


def _png(tmp_path, name, img, **save):
    path = tmp_path / name
    img.save(path, **save)
    return path


@pytest.mark.parametrize("name, make, expected", [
    ("gray.png", lambda: Image.new("L", (40, 40), 100), (100, 100, 100)),
    ("bilevel.png", lambda: Image.new("1", (40, 40), 1), (255, 255, 255)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (40, 40), (0, 0, 0, 0)), (255, 255, 255)),
    ("palette.png", lambda: Image.new("RGB", (40, 40), (200, 10, 10)).convert("P"), (200, 10, 10)),
    ("transparent.png", lambda: Image.new("RGBA", (40, 40), (0, 0, 0, 0)), (255, 255, 255)),  # over white
    ("gray_alpha.png", lambda: Image.new("LA", (40, 40), (0, 255)), (0, 0, 0)),
    ("deep.png", lambda: Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16 bit
])
def test_every_image_mode_becomes_the_rgb_a_viewer_shows(tmp_path, name, make, expected):
    data, ext = images.prepare_image(_png(tmp_path, name, make()).read_bytes(), 32)
    out = np.asarray(Image.open(io.BytesIO(data)))
    assert ext == "png" and out.shape == (32, 32, 3)
    assert np.abs(out.reshape(-1, 3).mean(0) - expected).max() <= 2


def test_empty_too_small_and_truncated_files_are_rejected_with_the_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(images.RejectedImage, match=r"empty file \(0 bytes\)"):
        images.prepare_image(empty.read_bytes(), 32)
    tiny = _png(tmp_path, "tiny.png", Image.new("RGB", (20, 12)))
    with pytest.raises(images.RejectedImage, match=r"too small: 20x12.*data.min_side \(16\)"):
        images.prepare_image(tiny.read_bytes(), 32, min_side=16)
    whole = _png(tmp_path, "whole.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(images.RejectedImage, match="cannot decode"):
        images.prepare_image(truncated.read_bytes(), 32)
    with pytest.raises(images.RejectedImage, match="cannot read: Is a directory"):
        images.read_file(tmp_path)  # unreadable: one reject, not the end of the run


def test_any_folder_of_images_shards_with_a_seeded_val_split(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = photos / ("2024/summer" if i % 2 else "misc")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 40 + i, 3), dtype=np.uint8)).save(folder / f"IMG {i}.JPG")
    (photos / "misc/notes.txt").write_text("not an image")
    (photos / "misc/broken.png").write_bytes(b"\x89PNG broken")
    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml", data={"source": str(photos), "folder_val_fraction": 0.2})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    done = run_stage("shard", project)
    assert done.returncode == 0, done.stderr
    assert "(image folder, no classes)" in done.stdout
    manifest = json.loads((project / "data/shards/manifest.json").read_text())
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert manifest["categories"] == []
    assert train["count"] + val["count"] == 24 and len(train["rejected"]) + len(val["rejected"]) == 1  # 25 images found
    assert val["count"] + len(val["rejected"]) == 5  # round(0.2 * 25)
    images, keys = shards.load_split(shards.shard_urls(project / "data/shards", "val"))
    assert images.shape[1:] == (3, 32, 32) and all("/" not in k and "." not in k for k in keys)
    sample_ = next(iter(shards.dataset(shards.shard_urls(project / "data/shards", "train"), None)))
    assert sample_["cls"] == -1
    again = run_stage("shard", project)  # the same seed picks the same val images
    assert again.returncode == 0 and json.loads((project / "data/shards/manifest.json").read_text()) == manifest


def _manifest() -> ShardManifest:
    missing = RejectedRow(path="/c/coast/00000009.jpg", reason="file listed but missing")
    broken = RejectedRow(path="/c/coast/00000002.jpg", reason="cannot decode")
    train = [BuiltShard(name="train-000000.tar", count=3, rejected=[broken], sha256="ab"),
             BuiltShard(name="train-000001.tar", count=2, rejected=[], sha256="cd")]
    val = [BuiltShard(name="val-000000.tar", count=1, rejected=[], sha256="ef")]
    return ShardManifest(source="data/raw", layout="Places365 file lists, extracted", image_size=32, categories=["/c/coast"],
                         splits={"train": SplitManifest.of(train, [missing]), "val": SplitManifest.of(val, [])})


def _token_meta() -> tokens.TokenMeta:
    return tokens.TokenMeta(codebook_size=32, grid=(8, 8), downsample=4, image_size=32, dtype="uint16", vqgan_sha256="ab",
                            train_count=2, train_keys=["a", "b"], val_count=1, val_keys=["c"])


def _rewrite(path, edit) -> None:
    on_disk = json.loads(path.read_text())
    edit(on_disk)
    path.write_text(json.dumps(on_disk))


def test_the_manifest_round_trips_and_an_older_one_names_the_fix(tmp_path):
    manifest = _manifest()
    manifest.write(tmp_path / MANIFEST)
    assert shards.load_manifest(tmp_path) == manifest
    on_disk = json.loads((tmp_path / MANIFEST).read_text())  # the JSON users and tests read
    assert on_disk["image_size"] == 32 and on_disk["splits"]["train"] == {
        "count": 5,
        "rejected": [{"path": "/c/coast/00000009.jpg", "reason": "file listed but missing"},  # the source's first
                     {"path": "/c/coast/00000002.jpg", "reason": "cannot decode"}],
        "shards": [{"name": "train-000000.tar", "sha256": "ab"}, {"name": "train-000001.tar", "sha256": "cd"}]}
    assert shards.shard_urls(tmp_path, "val") == [str(tmp_path / "val-000000.tar")]

    def older(m):
        del m["image_size"], m["splits"]["val"]["shards"]
        m["splits"]["train"]["rejected"][0] = "/c/coast/00000009.jpg"
    _rewrite(tmp_path / MANIFEST, older)
    with pytest.raises(StoredRecordError, match=r"manifest.json: not a ShardManifest this code reads \(image_size: Field "
                       r"required; splits.train.rejected.0: .*; splits.val.shards: Field required\).*`dvc repro -f shard`"):
        shards.load_manifest(tmp_path)
    manifest.write(tmp_path / MANIFEST)
    _rewrite(tmp_path / MANIFEST, lambda m: m["splits"].pop("val"))
    with pytest.raises(StoredRecordError, match=r"splits must be \['train', 'val'\], not \['train'\]"):
        shards.load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"source": ')  # cut short
    with pytest.raises(StoredRecordError, match=r"manifest.json: not a ShardManifest this code reads \(not JSON"):
        shards.load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"elsewhere/manifest.json: not found; run `dvc repro shard` first"):
        shards.load_manifest(tmp_path / "elsewhere")


def test_token_meta_round_trips_and_an_older_one_names_the_fix(tmp_path):
    meta = _token_meta()
    meta.write(tmp_path / tokens.META)
    assert tokens.load_meta(tmp_path) == meta and tokens.load_meta(tmp_path).val_keys == ["c"]
    assert json.loads((tmp_path / tokens.META).read_text())["grid"] == [8, 8]
    _rewrite(tmp_path / tokens.META, lambda m: m.pop("vqgan_sha256"))
    with pytest.raises(StoredRecordError, match=r"meta.json: not a TokenMeta this code reads \(vqgan_sha256: Field "
                       r"required\).*`dvc repro -f extract_tokens`"):
        tokens.load_meta(tmp_path)
    meta.write(tmp_path / tokens.META)
    _rewrite(tmp_path / tokens.META, lambda m: m.update(train_count=3, keys=[]))
    with pytest.raises(StoredRecordError, match=r"keys: Extra inputs are not permitted"):
        tokens.load_meta(tmp_path)
    _rewrite(tmp_path / tokens.META, lambda m: m.pop("keys"))
    with pytest.raises(StoredRecordError, match=r"train_count is 3 but there are 2 train_keys"):
        tokens.load_meta(tmp_path)


def test_stage_summary_lines_are_built_from_typed_results():
    assert (sample_stage.summary_line(sample.SampleCounts(train=72, val=18, categories=6), 32, Path("data/raw"))
            == "sample: 72 train + 18 val images, 6 categories, 32px -> data/raw")
    assert shard_stage.summary_line(_manifest(), Path("data/shards/manifest.json")) == (
        "shard: data/raw (Places365 file lists, extracted): train 5 images in 2 shards, val 1 in 1; 2 rejected "
        "(reasons in data/shards/manifest.json)")
    prec = runtime.precision("fp32", torch.device("cpu"), runtime.Hardware("cpu", "Test CPU", "AVX2", native_bf16=False))
    assert extract_tokens_stage.summary_line(_token_meta(), prec, Path("data/tokens")) == (
        "extract_tokens: train 2 + val 1 images -> 8x8 tokens (K=32), fp32 on cpu (Test CPU, AVX2, no native bf16) -> data/tokens")


@pytest.mark.parametrize("module", ["stages.shard", "maskgit_inpaint.data.tokens"])
def test_the_shard_stage_and_token_reading_import_no_torch(module):
    # The shard stage's spawned workers each re-import it, and reading tokens needs no tokenizer: torch would cost
    # seconds per process for nothing. A fresh interpreter, since this one has torch loaded already.
    check = (f"import sys, {module}; loaded = sorted(m for m in sys.modules if m.startswith('maskgit_inpaint')); "
             "sys.exit(f'torch imported along with {loaded}' if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", check], env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
