"""The public taming-transformers checkpoint layout loads through VQGAN.from_taming_checkpoint,
and its discriminator through load_taming_discriminator.

The checkpoint is written by tests/downloads.py from an independent description of
taming's VQModel (its Encoder/Decoder naming) and of its loss's NLayerDiscriminator,
with the shapes of vqgan_imagenet_f16_1024 and random values, wrapped the way
Lightning saves it. Nothing is downloaded.
"""

import pytest
import torch

from maskgit_inpaint import config, runtime
from maskgit_inpaint.models.checkpoint import ForeignCheckpointError, read_foreign_state_dict
from maskgit_inpaint.models.losses import PatchDiscriminator, load_taming_discriminator
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training import vqgan as vqgan_training

from conftest import write_tiny_params
from downloads import F16, save_lightning, taming_discriminator_shapes, taming_f16_state, taming_vqmodel_shapes


@pytest.fixture(scope="module")
def f16_state():
    return taming_f16_state()


@pytest.fixture(scope="module")
def f16_file(f16_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("taming") / "vqgan_imagenet_f16_1024.ckpt"
    save_lightning(path, f16_state)
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
    save_lightning(tmp_path / "broken.ckpt", broken)
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
    save_lightning(tokenizer_only, {k: torch.zeros(shape) for k, shape in taming_vqmodel_shapes(**small).items()})
    learners = _initial_learners(tmp_path, small, tokenizer_only)
    assert (f"finetune_vqgan: {tokenizer_only} holds no loss.discriminator.* tensors; the discriminator starts from scratch"
            in capsys.readouterr().out)
    assert isinstance(learners.discriminator, PatchDiscriminator)
