import dataclasses
import json

import pytest
import torch

from maskgit_inpaint.models.checkpoint import CONFIG, save_model
from maskgit_inpaint.models.transformer import LocalMixing, MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig


def test_vqgan_shapes_and_taming_parameter_names():
    model = VQGAN(VQGANConfig(resolution=32, ch_mult=(1, 1, 2), attn_resolutions=(8,), n_embed=16, embed_dim=8, z_channels=32)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = model.encode(x)
    assert ids.shape == (2, 8, 8) and ids.max() < 16
    assert model.decode_indices(ids).shape == (2, 3, 32, 32)
    names = set(model.state_dict())
    # The layout of taming-transformers' VQModel, so its checkpoints map key by key.
    for key in ("encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "encoder.down.1.downsample.conv.weight",
                "encoder.down.2.block.0.nin_shortcut.weight", "encoder.down.2.attn.0.q.weight", "encoder.mid.attn_1.proj_out.weight",
                "decoder.up.2.block.1.conv2.weight", "decoder.up.1.upsample.conv.weight", "decoder.conv_out.weight",
                "quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.weight"):
        assert key in names, key


def test_vqgan_straight_through_reaches_the_encoder():
    model = VQGAN(VQGANConfig(resolution=16, n_embed=8, embed_dim=4, z_channels=32))
    rec, vq_loss, _, _ = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    (rec.pow(2).mean() + vq_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad.abs().sum() > 0


def test_saved_models_reload_identically(tmp_path):
    vq = VQGAN(VQGANConfig(resolution=16, n_embed=8, embed_dim=4, z_channels=32)).eval()
    save_model(vq, tmp_path / "vq")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(VQGAN.load(tmp_path / "vq").encode(x), vq.encode(x))
    tf = MaskedTokenTransformer(TransformerConfig(codebook_size=8, n_tokens=16, n_layer=1, n_head=2, n_embd=16,
                                                  local_mixing=True)).eval()
    save_model(tf, tmp_path / "tf", extra={"steps": 3})
    assert MaskedTokenTransformer.load(tmp_path / "tf").config.local_mixing
    ids = torch.randint(0, 9, (2, 16))
    assert torch.equal(MaskedTokenTransformer.load(tmp_path / "tf")(ids), tf(ids))


def test_a_model_directory_holds_the_model_and_its_bytes_follow_the_weights(tmp_path):
    tf = MaskedTokenTransformer(TransformerConfig(codebook_size=8, n_tokens=16, n_layer=1, n_head=2, n_embd=16))
    for name in ("a", "b"):
        save_model(tf, tmp_path / name, extra={"steps": 3})
    assert json.loads((tmp_path / "a" / CONFIG).read_text()) == {"model": dataclasses.asdict(tf.config), "steps": 3}
    assert all((tmp_path / "a" / f.name).read_bytes() == f.read_bytes() for f in (tmp_path / "b").iterdir())
    with torch.no_grad():
        tf.head.bias.add_(1.0)
    save_model(tf, tmp_path / "changed", extra={"steps": 3})
    assert (tmp_path / "changed" / CONFIG).read_bytes() == (tmp_path / "a" / CONFIG).read_bytes()
    assert (tmp_path / "changed/model.safetensors").read_bytes() != (tmp_path / "a/model.safetensors").read_bytes()


def test_transformer_is_bidirectional():
    tf = MaskedTokenTransformer(TransformerConfig(codebook_size=8, n_tokens=16, n_layer=2, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 8, (1, 16))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 8
    # A later token changes the prediction at the first position: no causal mask.
    assert not torch.allclose(tf(ids)[0, 0], tf(changed)[0, 0])
    assert tf(ids).shape == (1, 16, 8)


def test_local_mixing_reaches_exactly_the_3x3_grid_neighbours():
    mixing = LocalMixing(TransformerConfig(n_tokens=64, n_embd=8))
    torch.nn.init.normal_(mixing.conv.weight)  # every tap nonzero
    x = torch.randn(1, 64, 8)
    changed = x.clone()
    changed[0, 3 * 8 + 5] = torch.randn(8)  # the token at row 3, column 5 of the 8x8 grid
    moved = (mixing(changed) - mixing(x)).abs().sum(-1).view(8, 8) > 0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:5, 4:7] = True
    assert torch.equal(moved, expected)


def test_local_mixing_needs_a_square_token_grid():
    with pytest.raises(ValueError, match="square token grid"):
        TransformerConfig(n_tokens=24, local_mixing=True)
