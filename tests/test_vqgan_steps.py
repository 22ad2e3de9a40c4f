"""The VQGAN train loop's named steps, each alone: GAN step, dead-code restart, resume, the reported numbers."""
import math

import pytest
import torch

from maskgit_inpaint import config, runtime
from maskgit_inpaint.models.losses import LossConfig, TokenizerLoss
from maskgit_inpaint.training import vqgan
from maskgit_inpaint.training.resume import Resume

from conftest import write_tiny_params

SIZE = 32  # the tiny profile's image size
CPU = torch.device("cpu")
FP32 = runtime.precision("fp32", CPU)


@pytest.fixture
def params(tmp_path):
    return config.load(write_tiny_params(tmp_path / "params.yaml", vqgan={"grad_accum_steps": 2})).vqgan


def _pixels(n_batches: int, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=g) for _ in range(n_batches)]


def _learners(p) -> tuple[vqgan.Learners, TokenizerLoss]:
    learners = vqgan.initial_learners(p, SIZE, None, CPU, FP32)
    loss_fn = TokenizerLoss(LossConfig(p.perceptual_weight, p.disc_weight, p.disc_start), None, learners.discriminator)
    return learners, loss_fn


def _step(learners, loss_fn, pixels, step_index, usage, p) -> vqgan.GANStepOutcome:
    return vqgan.gan_step(learners, loss_fn, iter(pixels), step_index=step_index, lr=p.lr,
                          grad_accum_steps=p.grad_accum_steps, usage=usage, prec=FP32)


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_gan_step_leaves_the_discriminator_alone_before_disc_start(params):
    torch.manual_seed(0)
    learners, loss_fn = _learners(params)
    model_before, disc_before = _copy(learners.model), _copy(learners.discriminator)
    usage = torch.zeros(params.n_embed, dtype=torch.long)
    outcome = _step(learners, loss_fn, _pixels(2), params.disc_start - 1, usage, params)

    assert not {"g_loss", "d_loss"} & set(outcome.losses) and outcome.losses["l1"] > 0
    assert all(torch.equal(v, disc_before[k]) for k, v in learners.discriminator.state_dict().items())
    assert not learners.d_optimizer.state  # not stepped at all, not even with a zero gradient
    assert any(not torch.equal(v, model_before[k]) for k, v in learners.model.state_dict().items())
    tokens_per_image = (SIZE // learners.model.config.downsample) ** 2
    assert usage.sum() == 2 * 4 * tokens_per_image  # both accumulated passes counted
    assert outcome.z.shape == (4, params.embed_dim, SIZE // 4, SIZE // 4)

    outcome = _step(learners, loss_fn, _pixels(2, seed=1), params.disc_start, usage, params)
    assert {"g_loss", "d_loss", "d_weight"} <= set(outcome.losses)
    assert any(not torch.equal(v, disc_before[k]) for k, v in learners.discriminator.state_dict().items())


def test_dead_code_restart_reseeds_exactly_the_unused_codes(params):
    torch.manual_seed(0)
    model = vqgan.VQGAN(vqgan.model_config(params, SIZE))
    codebook = model.quantize.embedding.weight
    before = codebook.detach().clone()
    usage = torch.ones(params.n_embed, dtype=torch.long)
    dead = torch.tensor([1, 7, 30])
    usage[dead] = 0
    z = torch.randn(2, params.embed_dim, 4, 4)  # 32 encoder outputs to draw from

    assert vqgan.restart_dead_codes(model, usage, z, torch.Generator().manual_seed(3)) == len(dead)
    alive = torch.ones(params.n_embed, dtype=torch.bool)
    alive[dead] = False
    assert torch.equal(codebook[alive], before[alive])
    pool = z.permute(0, 2, 3, 1).reshape(-1, params.embed_dim)
    for code in dead:  # each re-seeded code is one of the encoder outputs
        assert (pool == codebook[code]).all(1).any() and not torch.equal(codebook[code], before[code])
    assert not usage.any()  # counting starts afresh

    again = codebook.detach().clone()
    assert vqgan.restart_dead_codes(model, torch.ones_like(usage), z, torch.Generator().manual_seed(3)) == 0
    assert torch.equal(codebook, again)


def test_resume_restores_step_weights_optimizer_and_continues_identically(params, tmp_path):
    torch.manual_seed(0)
    learners, loss_fn = _learners(params)
    usage = torch.zeros(params.n_embed, dtype=torch.long)
    for index, pixels in enumerate((_pixels(2, seed=0), _pixels(2, seed=1))):
        _step(learners, loss_fn, pixels, params.disc_start + index, usage, params)  # both optimizers have moments
    initial = vqgan.Reconstruction(11.0, 0.1, vqgan.CodebookHealth(30, 0.9375, 20.5))
    progress = vqgan.Progress(2, usage, initial, [{"step": 2, "l1": 0.5}], {"recon_psnr": 12.0, "step": 2})
    resume = Resume(tmp_path / "state.pt", params.model_dump(mode="json"))
    vqgan.save_checkpoint(resume, learners, progress)

    state = resume.load()
    model = vqgan.resumed_model(state)
    assert model.config == learners.model.config  # the saved architecture, not one rebuilt from params
    restored = vqgan.build_learners(params, model, CPU, FP32)
    restored_progress = vqgan.restore(restored, state, CPU)
    assert (restored_progress.done, restored_progress.curve, restored_progress.best) == (2, progress.curve, progress.best)
    assert restored_progress.initial == initial and torch.equal(restored_progress.usage, usage)
    for a, b in ((learners.model, restored.model), (learners.discriminator, restored.discriminator)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    for a, b in ((learners.optimizer, restored.optimizer), (learners.d_optimizer, restored.d_optimizer)):
        moments = [(s["exp_avg"], restored_s["exp_avg"]) for s, restored_s in zip(a.state.values(), b.state.values())]
        assert moments and all(torch.equal(x, y) for x, y in moments)

    next_pixels = _pixels(2, seed=2)
    _step(learners, loss_fn, next_pixels, 2 + params.disc_start, usage.clone(), params)
    restored_loss = TokenizerLoss(loss_fn.config, None, restored.discriminator)
    _step(restored, restored_loss, next_pixels, 2 + params.disc_start, restored_progress.usage, params)
    assert all(torch.equal(v, restored.model.state_dict()[k]) for k, v in learners.model.state_dict().items())


def test_reported_numbers_are_flat_and_leave_out_what_is_missing():
    final = vqgan.Reconstruction(20.0, 0.5, vqgan.CodebookHealth(31, 0.96875, 25.0), lpips=0.2)
    initial = vqgan.Reconstruction(math.nan, 0.1, vqgan.CodebookHealth(8, 0.25, 6.0))  # a NaN: left out, never null
    flat = vqgan.VQGANMetrics(final, initial, train_images_per_s=50.0, input_wait_share=0.01).flat()
    assert flat == {"recon_psnr": 20.0, "recon_ssim": 0.5, "recon_lpips": 0.2, "codebook_used": 31,
                    "codebook_usage": 0.96875, "codebook_perplexity": 25.0, "init_recon_ssim": 0.1,
                    "init_codebook_used": 8, "init_codebook_usage": 0.25, "init_codebook_perplexity": 6.0,
                    "train_images_per_s": 50.0, "input_wait_share": 0.01}
    assert vqgan.Reconstruction.from_metrics(final.as_metrics()) == final


@pytest.mark.parametrize("done, every, due", [(5, 5, True), (10, 5, False), (4, 5, False), (5, 0, False)])
def test_periodic_actions_fall_on_their_multiples_but_not_the_last_step(done, every, due):
    assert vqgan.due(done, every, steps=10) is due
