"""Tokenizer training: taming's losses, frozen parts, fine-tuning a taming-format file, exact resume."""
import json
import math
import shutil

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maskgit_inpaint import config, perceptual, runtime
from maskgit_inpaint.models.checkpoint import load_training_state
from maskgit_inpaint.models.losses import LossConfig, PatchDiscriminator, TokenizerLoss, adaptive_weight, hinge_d_loss
from maskgit_inpaint.training import vqgan

from conftest import kill_stage_at_first_checkpoint, run_stage, write_tiny_params


def _project(tiny_chain, path, **vqgan_updates):
    (path / "pretrained").mkdir(parents=True)
    shutil.copytree(tiny_chain / "data/shards", path / "data/shards")
    write_tiny_params(path / "params.yaml", vqgan=vqgan_updates)
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}


class TinyLPIPS(torch.nn.Module):
    """A small stand-in with LPIPS's interface: (pred, target) in [-1, 1] -> (B, 1, H, W) distance map."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.requires_grad_(False)

    def forward(self, pred, target):
        return (self.features(pred) - self.features(target)).pow(2).mean(1, keepdim=True)


def test_hinge_and_adaptive_weight_follow_taming():
    assert hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])).item() == pytest.approx(0.5 * (0.5 + 0.75))
    layer = torch.nn.Parameter(torch.ones(3))
    nll, g_loss = (layer * 4.0).sum(), (layer * 2.0).sum()
    # |grad nll| / |grad g| = 2, times disc_weight 0.8
    assert adaptive_weight(nll, g_loss, layer, 0.8).item() == pytest.approx(1.6, rel=1e-3)


def test_patch_discriminator_has_taming_layout_and_patch_logits():
    d = PatchDiscriminator(3, ch=16, n_layers=3)
    names = [k for k in d.state_dict() if k.endswith("weight")]
    assert names == ["main.0.weight", "main.2.weight", "main.3.weight", "main.5.weight", "main.6.weight",
                     "main.8.weight", "main.9.weight", "main.11.weight"]
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_adversarial_terms_start_at_disc_start_and_train_only_the_tokenizer():
    d = PatchDiscriminator(3, ch=8, n_layers=1)
    loss_fn = TokenizerLoss(LossConfig(perceptual_weight=1.0, disc_weight=0.8, disc_start=5), TinyLPIPS(), d)
    last = torch.nn.Parameter(torch.randn(3, 4, 3, 3) * 0.1)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    recon = torch.nn.functional.conv2d(torch.rand(2, 4, 16, 16), last, padding=1)
    before, log_before = loss_fn.generator(images, recon, torch.tensor(0.1), 4, last)
    assert "g_loss" not in log_before and log_before["perceptual"] > 0 and not loss_fn.adversarial(4)
    after, log_after = loss_fn.generator(images, recon, torch.tensor(0.1), 5, last)
    assert loss_fn.adversarial(5) and log_after["d_weight"] > 0
    after.backward()
    assert last.grad is not None and all(q.grad is None for q in d.parameters())  # the generator pass leaves D alone
    d_loss, log = loss_fn.discriminator_loss(images, recon)
    d_loss.backward()
    assert all(q.grad is not None for q in d.parameters()) and log["d_loss"] > 0


@pytest.mark.parametrize("updates, message", [
    ({"train_parts": ["decoder"]}, "training from scratch"),
    ({"init": "x.ckpt", "train_parts": ["codebook"], "disc_weight": 0.8}, "needs the decoder"),
    ({"init": "x.ckpt", "train_parts": ["decoder"], "dead_code_restart_every": 5}, "add codebook"),
    ({"train_parts": ["decoder", "head"]}, "train_parts"),
])
def test_inconsistent_training_params_fail_with_the_key(tmp_path, updates, message):
    with pytest.raises(config.ParamsError, match=message):
        config.load(write_tiny_params(tmp_path / "params.yaml", vqgan=updates))


def test_perceptual_term_and_lpips_metric_with_an_injected_network(tiny_chain, tmp_path, monkeypatch):
    net = TinyLPIPS()
    monkeypatch.setattr(perceptual, "resolve_lpips", lambda device, download, trunk="alex": perceptual.Backbone(net, None))
    p = config.load(write_tiny_params(tmp_path / "params.yaml", vqgan={"steps": 6, "disc_start": 2, "num_workers": 0})).vqgan
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        result = vqgan.train(p, image_size=32, shards_dir=tiny_chain / "data/shards", state_path=tmp_path / "state.pt")
    assert result.unavailable == {}
    (row,) = result.curve
    assert row["perceptual"] > 0 and math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"])
    assert result.metrics.final.lpips > 0 and result.metrics.initial.lpips > 0
    assert result.metrics.flat()["recon_lpips"] == result.metrics.final.lpips
    strips = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "images")]
    for step in (0, 6):  # at initialisation and at the end
        assert any(f"reconstructions+step+{step}+" in path for path in strips), strips


def test_without_lpips_weights_training_says_so_and_uses_l1(tiny_chain, tmp_path, capsys):
    p = config.load(write_tiny_params(tmp_path / "params.yaml", vqgan={"steps": 2, "num_workers": 0})).vqgan
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():  # its own run: one left active would follow later tests into their stores
        result = vqgan.train(p, image_size=32, shards_dir=tiny_chain / "data/shards", state_path=tmp_path / "state.pt")
    assert "training without the perceptual term" in capsys.readouterr().out
    assert set(result.unavailable) == {"perceptual_loss", "recon_lpips"} and result.metrics.final.lpips is None
    assert not {"recon_lpips", "init_recon_lpips"} & set(result.metrics.flat())
    assert math.isnan(result.curve[-1]["perceptual"])


def test_finetuning_a_taming_checkpoint_trains_decoder_and_codebook_only(tiny_chain, tmp_path):
    # disc_start = steps: the discriminator loads but never judges. From step 6 (tiny) the PSNR gain checked below
    # depended on its random weights (+0.43, over +0.5, -0.02 dB for three seeds), not on what fine-tuning trains.
    env = _project(tiny_chain, tmp_path, init="tiny.ckpt", train_parts=["codebook", "decoder"], steps=40, lr=0.002,
                   disc_start=40)
    pretrained = load_file(tiny_chain / "models/vqgan/model.safetensors")
    # The tiny params' discriminator (disc_ch 32, disc_layers 2) as taming stores it beside the tokenizer.
    discriminator = {f"loss.discriminator.{k}": v for k, v in PatchDiscriminator(3, 32, 2).state_dict().items()}
    torch.save({"global_step": 12, "state_dict": {**pretrained, **discriminator}}, tmp_path / "pretrained/tiny.ckpt")

    done = run_stage("finetune_vqgan", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "from pretrained/tiny.ckpt" in done.stdout
    assert "loaded 16 discriminator tensors from pretrained/tiny.ckpt" in done.stdout
    tuned = load_file(tmp_path / "models/vqgan/model.safetensors")
    for name, before in pretrained.items():
        frozen = name.startswith(("encoder.", "quant_conv."))
        assert torch.equal(tuned[name], before) == frozen, name
    m = json.loads((tmp_path / "metrics/vqgan.json").read_text())
    assert m.pop("profile") == "embedded"  # the one name beside the numbers: dvc metrics diff shows it
    assert all(isinstance(k, str) and type(v) in (int, float) and math.isfinite(v) for k, v in m.items()), m
    summary = json.loads((tmp_path / "metrics/vqgan_summary.json").read_text())
    assert summary["runtime"]["device"] == "cpu" and "recon_lpips" in summary["unavailable"]
    saved = json.loads((tmp_path / "models/vqgan/config.json").read_text())
    assert saved.keys() == {"model", "steps", "init"} and saved["steps"] == 40  # what defines the weights, no metrics
    pretrained_psnr = json.loads((tiny_chain / "metrics/vqgan.json").read_text())["recon_psnr"]
    assert m["init_recon_psnr"] == pytest.approx(pretrained_psnr, abs=1e-3)  # the init is the loaded checkpoint
    assert m["recon_psnr"] > m["init_recon_psnr"] + 0.5
    assert m["train_images_per_s"] > 0 and 0 <= m["input_wait_share"] < 1


def test_killed_vqgan_training_resumes_to_the_same_weights(tiny_chain, tmp_path):
    updates = dict(steps=24, checkpoint_every=4, grad_accum_steps=2, disc_start=6, dead_code_restart_every=5, eval_every=10)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = _project(tiny_chain, straight, **updates)
    done = run_stage("finetune_vqgan", straight, env)
    assert done.returncode == 0, done.stderr

    env = _project(tiny_chain, killed, **updates)
    state = killed / "checkpoints/vqgan.pt"
    kill_stage_at_first_checkpoint("finetune_vqgan", killed, env, state)
    assert state.exists(), "training finished before its first checkpoint; give it more steps"
    assert not (killed / "models/vqgan").exists()

    done = run_stage("finetune_vqgan", killed, env)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    a = load_file(straight / "models/vqgan/model.safetensors")
    b = load_file(killed / "models/vqgan/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "metrics/vqgan_curve.csv").read_text() == (killed / "metrics/vqgan_curve.csv").read_text()
    # Same weights, same model directory: nothing run-dependent (throughput) is saved beside them.
    assert (straight / "models/vqgan/config.json").read_bytes() == (killed / "models/vqgan/config.json").read_bytes()


def test_forced_fp16_trains_the_tokenizer_with_loss_scaling(tiny_chain, tmp_path, monkeypatch):
    # One scaler for both losses, stepped per optimizer; on this CPU fp16 is emulated, and says so.
    p = config.load(write_tiny_params(tmp_path / "params.yaml", vqgan={"steps": 4, "disc_start": 1, "checkpoint_every": 2,
                                                                     "eval_every": 2, "num_workers": 0,
                                                                     "precision": "fp16"})).vqgan
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = tmp_path / "state.pt"
    monkeypatch.setattr(runtime, "_warned", set())  # the once-per-process warning, fresh for this test
    with pytest.warns(runtime.SlowPrecisionWarning), mlflow.start_run():
        result = vqgan.train(p, image_size=32, shards_dir=tiny_chain / "data/shards", state_path=state)
    assert result.precision.name == "fp16"
    assert all(torch.isfinite(q).all() for q in result.model.parameters())
    assert np.isfinite(result.metrics.final.psnr) and load_training_state(state)["scaler"]["scale"] > 0
