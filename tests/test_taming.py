"""The public taming-transformers checkpoint layout loads through VQGAN.from_taming_checkpoint,
and its discriminator through load_taming_discriminator.

The checkpoint is written here from an independent description of taming's VQModel
(its Encoder/Decoder naming) and of its loss's NLayerDiscriminator, with the shapes of
vqgan_imagenet_f16_1024 and random values, wrapped the way Lightning saves it.
Nothing is downloaded.
"""
import sys
import types

import pytest
import torch

from maskgit_inpaint import config, runtime
from maskgit_inpaint.models.checkpoint import ForeignCheckpointError, read_foreign_state_dict
from maskgit_inpaint.models.losses import PatchDiscriminator, load_taming_discriminator
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training import vqgan as vqgan_training

from conftest import write_tiny_params

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
    for k, shape in taming_discriminator_shapes().items():
        state[k] = torch.randn(shape, generator=generator) * 0.02
        if k.endswith(".num_batches_tracked"):
            state[k] = torch.tensor(1200)
        elif k.endswith(".running_var"):
            state[k] = state[k].abs() + 0.5  # variances are positive
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
    assert "dropped 24 loss.* tensors" in capsys.readouterr().out  # 2 of LPIPS, 22 of the discriminator
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


@pytest.mark.parametrize("ch, n_layers", [(64, 3), (32, 2)])  # taming's default; the tiny and embedded profiles'
def test_our_discriminator_names_are_taming_names(ch, n_layers):
    ours = {f"loss.discriminator.{k}": tuple(v.shape) for k, v in PatchDiscriminator(3, ch, n_layers).state_dict().items()}
    assert ours == taming_discriminator_shapes(3, ch, n_layers)


def test_the_discriminator_loads_the_checkpoints_weights_and_running_statistics(f16_file, f16_state, capsys):
    discriminator = PatchDiscriminator(3, 64, 3)
    assert load_taming_discriminator(read_foreign_state_dict(f16_file), discriminator, f16_file)
    assert f"loaded 22 discriminator tensors from {f16_file}" in capsys.readouterr().out
    loaded = discriminator.state_dict()
    assert all(torch.equal(v, f16_state[f"loss.discriminator.{k}"]) for k, v in loaded.items())
    assert loaded["main.3.num_batches_tracked"] == 1200 and loaded["main.3.num_batches_tracked"].dtype == torch.long


def test_a_checkpoint_without_a_discriminator_leaves_it_alone(f16_state):
    tokenizer_only = {k: v for k, v in f16_state.items() if not k.startswith("loss.discriminator.")}
    discriminator = PatchDiscriminator(3, 64, 3)
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    assert not load_taming_discriminator(tokenizer_only, discriminator, "tokenizer_only.ckpt")
    assert all(torch.equal(v, before[k]) for k, v in discriminator.state_dict().items())


@pytest.mark.parametrize("ch, n_layers, expected", [
    (64, 2, r"unexpected loss\.discriminator\.main\.9\.running_mean"
            r"(.|\n)*loss\.discriminator\.main\.8\.weight: file \(512, 256, 4, 4\), model \(1, 256, 4, 4\)"),
    (32, 3, r"loss\.discriminator\.main\.0\.weight: file \(64, 3, 4, 4\), model \(32, 3, 4, 4\)"),
])
def test_a_discriminator_of_another_size_fails_with_the_keys_and_the_files_values(f16_file, f16_state, ch, n_layers,
                                                                                 expected):
    with pytest.raises(ForeignCheckpointError, match=expected) as error:
        load_taming_discriminator(f16_state, PatchDiscriminator(3, ch, n_layers), f16_file)
    message = str(error.value)
    assert str(f16_file) in message and "vqgan.disc_layers / disc_ch" in message
    assert "disc_layers=3, disc_ch=64; set these in params.yaml `vqgan`" in message


def test_a_partial_discriminator_fails_rather_than_half_loading(f16_state):
    partial = {"loss.discriminator.main.0.weight": f16_state["loss.discriminator.main.0.weight"]}
    with pytest.raises(ForeignCheckpointError, match=r"missing loss\.discriminator\.main\.2\.weight") as error:
        load_taming_discriminator(partial, PatchDiscriminator(3, 64, 3), "partial.ckpt")
    assert "not a whole taming NLayerDiscriminator" in str(error.value)


def _finetune_params(tmp_path, architecture):
    """Fine-tuning params with the tokenizer `architecture` (taming_vqmodel_shapes' arguments) and taming's discriminator."""
    vqgan = {k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items() if k != "resolution"}
    return config.load(write_tiny_params(tmp_path / "params.yaml", vqgan={
        **vqgan, "init": "x.ckpt", "train_parts": ["codebook", "decoder"], "disc_layers": 3, "disc_ch": 64})).vqgan


def _initial_learners(tmp_path, architecture, init_path):
    cpu = torch.device("cpu")
    p = _finetune_params(tmp_path, architecture)
    return vqgan_training.initial_learners(p, architecture["resolution"], init_path, cpu, runtime.precision("fp32", cpu))


def test_finetuning_starts_tokenizer_and_discriminator_from_the_init_file(f16_file, f16_state, tmp_path, capsys):
    learners = _initial_learners(tmp_path, F16, f16_file)
    out = capsys.readouterr().out
    assert f"loaded 22 discriminator tensors from {f16_file}" in out and "from scratch" not in out
    for module, prefix in ((learners.model, ""), (learners.discriminator, "loss.discriminator.")):
        assert all(torch.equal(v, f16_state[prefix + k]) for k, v in module.state_dict().items())
    assert learners.d_optimizer is not None and not learners.d_optimizer.state  # its training starts as before


def test_finetuning_from_a_file_without_a_discriminator_says_it_starts_one_from_scratch(tmp_path, capsys):
    small = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=32, z_channels=32, embed_dim=16,
                 n_embed=32)  # any tokenizer will do: the file has no discriminator
    tokenizer_only = tmp_path / "tokenizer_only.ckpt"
    _save_lightning(tokenizer_only, {k: torch.zeros(shape) for k, shape in taming_vqmodel_shapes(**small).items()})
    learners = _initial_learners(tmp_path, small, tokenizer_only)
    assert (f"finetune_vqgan: {tokenizer_only} holds no loss.discriminator.* tensors; the discriminator starts from scratch"
            in capsys.readouterr().out)
    assert isinstance(learners.discriminator, PatchDiscriminator)
