"""Files a user downloads, written by tests: the Places365 archives and random-weight metric backbones.

Nothing here is a stand-in for code: the archives are read by the real source reader,
the backbone files are loaded by the real torchvision / pytorch-fid / lpips code from a
temp torch hub. Their weights are random, so their numbers mean nothing.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pytorch_fid import inception

from maskgit_inpaint import perceptual
from maskgit_inpaint.data.scenes import CATEGORIES, render


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_places365_downloads(folder: Path, *, train: int, val: int, size: int = 256, seed: int = 0) -> Path:
    """filelist_places365-standard.tar, train_256_places365standard.tar, val_256.tar with `train` + `val` scenes of `size` px."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_rows = [(f"{CATEGORIES[i % len(CATEGORIES)]}/{i // len(CATEGORIES) + 1:08d}.jpg", i % len(CATEGORIES)) for i in range(train)]
    val_rows = [(f"Places365_val_{i + 1:08d}.jpg", i % len(CATEGORIES)) for i in range(val)]
    lists = {
        "categories_places365.txt": "".join(f"{c} {i}\n" for i, c in enumerate(CATEGORIES)),
        "places365_train_standard.txt": "".join(f"{r} {label}\n" for r, label in train_rows),
        "places365_val.txt": "".join(f"{r} {label}\n" for r, label in val_rows),
    }
    _tar(folder / "filelist_places365-standard.tar", {k: v.encode() for k, v in lists.items()})
    _tar(folder / "train_256_places365standard.tar",
         {f"data_256{r}": _jpeg(render(CATEGORIES[label], size, 0.02, rng)) for r, label in train_rows})
    _tar(folder / "val_256.tar", {f"val_256/{r}": _jpeg(render(CATEGORIES[label], size, 0.02, rng)) for r, label in val_rows})
    return folder


def write_random_backbones(torch_home: Path) -> Path:
    """AlexNet (LPIPS) and pytorch-fid's Inception with random weights, under the names their loaders look for."""
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).state_dict()
    with pytest.MonkeyPatch.context() as patch:  # build pytorch-fid's architecture without fetching its weights
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(torch.nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
        fid = inception.fid_inception_v3().state_dict()
    for name, state in ((perceptual.ALEXNET_FILE, alexnet), (perceptual.INCEPTION_FILE, fid)):
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, checkpoints / name)  # half: smaller files
    return torch_home
