"""The public taming-transformers checkpoint layout loads through VQGAN.from_taming_checkpoint.

The checkpoint is written here from an independent description of taming's VQModel
(its Encoder/Decoder naming), with the shapes of vqgan_imagenet_f16_1024 and random
values, wrapped the way Lightning saves it. Nothing is downloaded.
"""
import sys
import types

import pytest
import torch

from maskgit_inpaint.models.checkpoint import ForeignCheckpointError, read_foreign_state_dict
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig

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


def _save_lightning(path, state_dict):
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


@pytest.fixture(scope="module")
def f16_state():
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in taming_vqmodel_shapes(**F16).items()}
    for k in state:
        if ".norm" in k and k.endswith(".weight"):
            state[k] = torch.ones_like(state[k])  # GroupNorm scales
    # The training loss rides along in taming checkpoints: LPIPS (VGG) and the PatchGAN discriminator.
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    return state


@pytest.fixture(scope="module")
def f16_file(f16_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("taming") / "vqgan_imagenet_f16_1024.ckpt"
    _save_lightning(path, f16_state)
    return path


def test_our_parameter_names_are_taming_names():
    ours = {k: tuple(v.shape) for k, v in VQGAN(VQGANConfig(**F16)).state_dict().items()}
    assert ours == taming_vqmodel_shapes(**F16)


def test_f16_1024_checkpoint_loads_with_its_architecture_and_weights(f16_file, f16_state, capsys):
    model = VQGAN.from_taming_checkpoint(f16_file, VQGANConfig(**F16)).eval()
    assert "dropped 3 loss.* tensors" in capsys.readouterr().out
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], f16_state[k]) for k in loaded)
    images = torch.rand(2, 3, 64, 64) * 2 - 1  # f = 16: a 64 px image is 4 x 4 tokens
    ids = model.encode(images)
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.long and int(ids.max()) < 1024
    out = model.decode_indices(ids)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1


def test_architecture_is_read_off_the_checkpoint_when_not_given(f16_file):
    assert VQGAN.from_taming_checkpoint(f16_file).config == VQGANConfig(**F16)


@pytest.mark.parametrize("break_it, expected", [
    (lambda s: s.pop("decoder.up.3.block.1.conv2.weight"), r"missing decoder\.up\.3\.block\.1\.conv2\.weight"),
    (lambda s: s.update({"quantize.embedding.weight": torch.zeros(512, 256)}),
     r"quantize\.embedding\.weight: file \(512, 256\), model \(1024, 256\)"),
    (lambda s: s.update({"quantize.used": torch.zeros(10)}), r"unexpected quantize\.used"),
])
def test_a_wrong_shape_missing_or_extra_key_fails_with_the_list_and_the_fix(f16_state, tmp_path, break_it, expected):
    broken = dict(f16_state)
    break_it(broken)
    _save_lightning(tmp_path / "broken.ckpt", broken)
    with pytest.raises(ForeignCheckpointError, match=expected) as error:
        VQGAN.from_taming_checkpoint(tmp_path / "broken.ckpt", VQGANConfig(**F16))
    assert "broken.ckpt" in str(error.value) and "set these in params.yaml `vqgan`" in str(error.value)


def test_a_checkpoint_for_another_architecture_names_what_the_file_holds(f16_file):
    small = VQGANConfig(**{**F16, "ch_mult": (1, 1, 2, 2), "attn_resolutions": ()})
    with pytest.raises(ForeignCheckpointError, match=r"ch_mult=\[1, 1, 2, 2, 4\].*attn_resolutions=\[16\]"):
        VQGAN.from_taming_checkpoint(f16_file, small)


def test_truncated_or_missing_files_fail_clearly(f16_file, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(f16_file.read_bytes()[:100_000])
    with pytest.raises(ForeignCheckpointError, match=r"truncated\.ckpt: not a readable torch checkpoint.*download it again"):
        VQGAN.from_taming_checkpoint(truncated)
    with pytest.raises(ForeignCheckpointError, match=r"absent\.ckpt: no such checkpoint file"):
        VQGAN.from_taming_checkpoint(tmp_path / "absent.ckpt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ForeignCheckpointError, match=r"no encoder\.conv_in\.weight; not a taming-transformers VQModel"):
        VQGAN.from_taming_checkpoint(tmp_path / "other.ckpt")


def test_the_legacy_torch_format_loads_too(tmp_path):
    torch.save({"state_dict": {"quantize.embedding.weight": torch.ones(4, 2)}}, tmp_path / "old.ckpt",
               _use_new_zipfile_serialization=False)  # torch < 1.6 wrote this format
    assert torch.equal(read_foreign_state_dict(tmp_path / "old.ckpt")["quantize.embedding.weight"], torch.ones(4, 2))
