"""Files a user downloads, written by tests: the Places365 archives, taming's VQGAN checkpoint, metric backbones.

Nothing here is a stand-in for code: the archives are read by the real source reader,
the checkpoint by the real taming loader (written from an independent description of
taming's VQModel and NLayerDiscriminator naming, wrapped the way Lightning saves it),
the backbone files by the real torchvision / pytorch-fid / lpips code from a temp
torch hub. Their weights are random, so their numbers mean nothing.
"""
from __future__ import annotations

import io
import sys
import tarfile
import types
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


# vqgan_imagenet_f16_1024's model.yaml (ddconfig, embed_dim, n_embed)
F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
           z_channels=256, embed_dim=256, n_embed=1024)


def _conv(out, inp, k):
    return {"weight": (out, inp, k, k), "bias": (out,)}


def _norm(c):
    return {"weight": (c,), "bias": (c,)}


def _resnet(inp, out):
    shapes = {"norm1": _norm(inp), "conv1": _conv(out, inp, 3), "norm2": _norm(out), "conv2": _conv(out, out, 3)}
    if inp != out:
        shapes["nin_shortcut"] = _conv(out, inp, 1)
    return shapes


def _attn(c):
    return {"norm": _norm(c), "q": _conv(c, c, 1), "k": _conv(c, c, 1), "v": _conv(c, c, 1), "proj_out": _conv(c, c, 1)}


def _flatten(prefix, tree, out):
    for name, value in tree.items():
        if isinstance(value, tuple):
            out[f"{prefix}.{name}"] = value
        else:
            _flatten(f"{prefix}.{name}", value, out)
    return out


def taming_vqmodel_shapes(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, embed_dim, n_embed):
    """Key -> shape of taming.models.vqgan.VQModel's state dict, as taming's Encoder/Decoder name them."""
    encoder = {"conv_in": _conv(ch, 3, 3), "down": {}}
    res, block_in = resolution, ch
    for i, mult in enumerate(ch_mult):
        level = {"block": {}, "attn": {}}
        for j in range(num_res_blocks):
            level["block"][str(j)] = _resnet(block_in, ch * mult)
            block_in = ch * mult
            if res in attn_resolutions:
                level["attn"][str(j)] = _attn(block_in)
        if i != len(ch_mult) - 1:
            level["downsample"] = {"conv": _conv(block_in, block_in, 3)}
            res //= 2
        encoder["down"][str(i)] = level
    mid = {"block_1": _resnet(block_in, block_in), "attn_1": _attn(block_in), "block_2": _resnet(block_in, block_in)}
    encoder.update(mid=mid, norm_out=_norm(block_in), conv_out=_conv(z_channels, block_in, 3))

    decoder = {"conv_in": _conv(block_in, z_channels, 3), "mid": mid, "up": {}}
    for i in reversed(range(len(ch_mult))):
        level = {"block": {}, "attn": {}}
        for j in range(num_res_blocks + 1):
            level["block"][str(j)] = _resnet(block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if res in attn_resolutions:
                level["attn"][str(j)] = _attn(block_in)
        if i != 0:
            level["upsample"] = {"conv": _conv(block_in, block_in, 3)}
            res *= 2
        decoder["up"][str(i)] = level
    decoder.update(norm_out=_norm(block_in), conv_out=_conv(3, block_in, 3))

    shapes = _flatten("encoder", encoder, {})
    _flatten("decoder", decoder, shapes)
    _flatten("quant_conv", _conv(embed_dim, z_channels, 1), shapes)
    _flatten("post_quant_conv", _conv(z_channels, embed_dim, 1), shapes)
    shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    return shapes


def taming_discriminator_shapes(input_nc=3, ndf=64, n_layers=3):
    """Key -> shape of taming's NLayerDiscriminator state dict (BatchNorm, its default), as VQLPIPSWithDiscriminator
    stores it: conv(4x4, bias) + LeakyReLU, then n_layers blocks of conv(4x4, no bias) + BatchNorm + LeakyReLU with
    ndf * min(2 ** n, 8) channels, then a 1-channel conv(4x4, bias)."""
    shapes = {"main.0.weight": (ndf, input_nc, 4, 4), "main.0.bias": (ndf,)}
    channels = ndf
    for n in range(1, n_layers + 1):
        conv, out = 3 * n - 1, ndf * min(2 ** n, 8)  # sequence index: 2 per LeakyReLU-separated block of 3
        shapes[f"main.{conv}.weight"] = (out, channels, 4, 4)
        shapes.update({f"main.{conv + 1}.{name}": (out,) for name in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"main.{conv + 1}.num_batches_tracked"] = ()
        channels = out
    last = 3 * n_layers + 2
    shapes.update({f"main.{last}.weight": (1, channels, 4, 4), f"main.{last}.bias": (1,)})
    return {f"loss.discriminator.{k}": v for k, v in shapes.items()}


class ModelCheckpoint:
    """Stands for the Lightning callback class that Lightning pickles beside the weights."""


class HParams:
    """Stands for a hyperparameter object (Namespace, OmegaConf) pickled with constructor arguments and state."""

    def __init__(self, name, size):
        self.name, self.size = name, size

    def __reduce__(self):
        return HParams, (self.name, self.size), {"lr": 4.5e-6}

    def __setstate__(self, state):
        raise AssertionError("the loader must not run this class's code")


def save_lightning(path, state_dict):
    """torch.save a Lightning-style checkpoint whose callback state is keyed by a class of an uninstalled package."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}
    for cls in (ModelCheckpoint, HParams):
        cls.__module__ = names[-1]
        setattr(modules[names[-1]], cls.__name__, cls)
    sys.modules.update(modules)
    try:
        torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8", "state_dict": state_dict,
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
                    "hyper_parameters": HParams("vqgan", 256),
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}]}, path)
    finally:
        for name in names:
            del sys.modules[name]  # the loader must not need them


def taming_f16_state() -> dict[str, torch.Tensor]:
    """vqgan_imagenet_f16_1024's state dict with random values, its training loss (LPIPS, discriminator) included."""
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in taming_vqmodel_shapes(**F16).items()}
    for k in state:
        if ".norm" in k and k.endswith(".weight"):
            state[k] = torch.ones_like(state[k])  # GroupNorm scales
    # The training loss rides along in taming checkpoints: LPIPS (VGG) and the PatchGAN discriminator.
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    for k, shape in taming_discriminator_shapes().items():
        state[k] = torch.randn(shape, generator=generator) * 0.02
        if k.endswith(".num_batches_tracked"):
            state[k] = torch.tensor(1200)
        elif k.endswith(".running_var"):
            state[k] = state[k].abs() + 0.5  # variances are positive
    return state


def write_taming_f16_checkpoint(path: Path) -> Path:
    """A taming-layout vqgan_imagenet_f16_1024.ckpt with random weights at `path`."""
    save_lightning(path, taming_f16_state())
    return path
