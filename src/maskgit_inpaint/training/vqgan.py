"""Tokenizer training: from scratch or fine-tuning a taming checkpoint, with taming's losses.

L1 + LPIPS reconstruction, the codebook loss, and a PatchGAN hinge term with the
adaptive weight (models/losses.py). `train_parts` chooses what learns; the rest is
frozen (the reference fine-tunes decoder and codebook). Batches come from a
stream that depends only on the seed, and everything random is seeded by
(seed, step), so a resumed run ends exactly where an uninterrupted one does.

`train` runs named steps: `restore` (resume), `gan_step`, `restart_dead_codes`,
`Validation.evaluate_and_log`, `log_training` and `save_checkpoint`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from maskgit_inpaint import perceptual, runtime
from maskgit_inpaint.config import VQGANParams
from maskgit_inpaint.data import shards
from maskgit_inpaint.metrics import psnr, ssim
from maskgit_inpaint.models.checkpoint import read_foreign_state_dict
from maskgit_inpaint.models.losses import (TAMING_DISCRIMINATOR_PREFIX, LossConfig, PatchDiscriminator, TokenizerLoss,
                                           load_taming_discriminator)
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training.resume import Resume
from maskgit_inpaint.training.schedule import warmup_cosine

LOG_EVERY = 25
STRIP_IMAGES = 8  # val images in the MLflow reconstruction strip
PART_MODULES = {"encoder": ("encoder", "quant_conv"), "codebook": ("quantize",), "decoder": ("post_quant_conv", "decoder")}
CURVE_COLUMNS = ["step", "loss", "l1", "perceptual", "vq", "g_loss", "d_weight", "d_loss", "lr", "codebook_usage", "codebook_perplexity"]


@dataclass(frozen=True)
class CodebookHealth:
    used: int  # codes hit at least once
    usage: float  # share of the codebook hit
    perplexity: float  # exp entropy of the code frequencies


@dataclass(frozen=True)
class Reconstruction:
    """Val recon quality and codebook health of one set of weights."""

    psnr: float
    ssim: float
    codebook: CodebookHealth
    lpips: float | None = None  # None: no LPIPS network (VQGANResult.unavailable says why)

    def as_metrics(self) -> dict[str, float | int]:
        """Flat numbers under the names MLflow, the metrics file and the training state use."""
        named = {"recon_psnr": self.psnr, "recon_ssim": self.ssim, "recon_lpips": self.lpips,
                 "codebook_used": self.codebook.used, "codebook_usage": self.codebook.usage,
                 "codebook_perplexity": self.codebook.perplexity}
        return {k: v for k, v in named.items() if v is not None}

    @classmethod
    def from_metrics(cls, saved: dict) -> Reconstruction:
        health = CodebookHealth(saved["codebook_used"], saved["codebook_usage"], saved["codebook_perplexity"])
        return cls(saved["recon_psnr"], saved["recon_ssim"], health, saved.get("recon_lpips"))


@dataclass(frozen=True)
class VQGANMetrics:
    """What the stage reports: the final and the initial weights' reconstructions, and this run's throughput."""

    final: Reconstruction
    initial: Reconstruction  # random weights, or the init checkpoint as loaded
    train_images_per_s: float  # this process's steps (a resumed run: since the restart), evaluations included
    input_wait_share: float  # share of that time spent waiting on input (near 0: not input-bound)

    def flat(self) -> dict[str, float | int]:
        """One level of numbers for metrics/vqgan.json; a non-finite one (a diverged run) is left out, never NaN."""
        named = {**self.final.as_metrics(), **{f"init_{k}": v for k, v in self.initial.as_metrics().items()},
                 "train_images_per_s": self.train_images_per_s, "input_wait_share": self.input_wait_share}
        return {k: v for k, v in named.items() if math.isfinite(v)}


@dataclass
class VQGANResult:
    model: VQGAN
    metrics: VQGANMetrics
    precision: runtime.Precision  # what the run trained in, on which hardware
    unavailable: dict[str, str] = field(default_factory=dict)  # metric or loss term -> why it is missing
    curve: list[dict] = field(default_factory=list)  # one row per LOG_EVERY steps (CURVE_COLUMNS)


@dataclass
class Learners:
    """The tokenizer and the discriminator (None without an adversarial loss), their optimizers, one loss scaler."""

    model: VQGAN
    optimizer: torch.optim.Optimizer
    discriminator: PatchDiscriminator | None
    d_optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler  # fp16 only: one scale for both losses, stepped per optimizer

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.optimizer, self.d_optimizer) if opt is not None]


@dataclass
class Progress:
    """Where a run stands: what a checkpoint keeps beside the learners."""

    done: int  # optimizer steps taken
    usage: torch.Tensor  # (K,) code hits since the last dead-code restart
    initial: Reconstruction  # val recon of the initial weights
    curve: list[dict] = field(default_factory=list)  # CURVE_COLUMNS rows so far
    best: dict = field(default_factory=lambda: {"recon_psnr": -math.inf, "step": 0})  # best periodic val PSNR, its step


@dataclass
class GANStepOutcome:
    losses: dict[str, float]  # each loss term's mean over the step's forward passes
    z: torch.Tensor  # encoder outputs (B, e, h, w) of the last pass: the pool dead codes are re-seeded from


def model_config(p: VQGANParams, image_size: int) -> VQGANConfig:
    return VQGANConfig(
        resolution=image_size, ch=p.ch, ch_mult=p.ch_mult, num_res_blocks=p.num_res_blocks,
        attn_resolutions=p.attn_resolutions, z_channels=p.z_channels, embed_dim=p.embed_dim,
        n_embed=p.n_embed, beta=p.beta,
    )


def resumed_model(state: dict) -> VQGAN:
    """The architecture the saved state was trained with, whatever the params or the init file say now."""
    return VQGAN(VQGANConfig.from_dict(state["model_config"]))


def trainable_parameters(model: VQGAN, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze everything but `parts`; returns the parameters that train."""
    model.requires_grad_(False)
    for part in parts:
        for name in PART_MODULES[part]:
            getattr(model, name).requires_grad_(True)
    return [q for q in model.parameters() if q.requires_grad]


def build_learners(p: VQGANParams, model: VQGAN, dev: torch.device, prec: runtime.Precision) -> Learners:
    # Adam betas (0.5, 0.9) as taming-transformers trains its VQGAN and discriminator.
    optimizer = torch.optim.Adam(trainable_parameters(model, p.train_parts), lr=p.lr, betas=(0.5, 0.9))
    discriminator = PatchDiscriminator(3, p.disc_ch, p.disc_layers).to(dev) if p.disc_weight > 0 else None
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=p.lr, betas=(0.5, 0.9)) if discriminator else None
    return Learners(model, optimizer, discriminator, d_optimizer, prec.grad_scaler())


def initial_learners(p: VQGANParams, image_size: int, init_path: Path | None, dev: torch.device,
                     prec: runtime.Precision) -> Learners:
    """A fresh run's learners: random weights, or the taming checkpoint's tokenizer and discriminator.

    Both must match the params (architecture, disc_layers / disc_ch); the file, large, is read once for both.
    """
    config = model_config(p, image_size)
    if init_path is None:
        return build_learners(p, VQGAN(config).to(dev), dev, prec)
    foreign = read_foreign_state_dict(init_path)
    learners = build_learners(p, VQGAN.from_taming_state_dict(foreign, init_path, config, image_size).to(dev), dev, prec)
    if learners.discriminator is not None and not load_taming_discriminator(foreign, learners.discriminator, init_path):
        print(f"finetune_vqgan: {init_path} holds no {TAMING_DISCRIMINATOR_PREFIX}* tensors; "
              "the discriminator starts from scratch")
    return learners


def restore(learners: Learners, state: dict, dev: torch.device) -> Progress:
    """Load the saved weights, optimizer states and RNG into `learners` (built from `resumed_model`)."""
    learners.model.load_state_dict(state["model"])
    learners.optimizer.load_state_dict(state["optimizer"])
    if learners.discriminator:
        learners.discriminator.load_state_dict(state["discriminator"])
        learners.d_optimizer.load_state_dict(state["d_optimizer"])
    learners.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(state["step"], state["usage"].to(dev), Reconstruction.from_metrics(state["init_metrics"]),
                    state["history"], state["best"])


def save_checkpoint(resume: Resume, learners: Learners, progress: Progress) -> None:
    extra = {"usage": progress.usage, "init_metrics": progress.initial.as_metrics(), "scaler": learners.scaler.state_dict()}
    if learners.discriminator:
        extra.update(discriminator=learners.discriminator.state_dict(), d_optimizer=learners.d_optimizer.state_dict())
    resume.save(learners.model, learners.optimizer, progress.done, progress.best, progress.curve, extra)


def gan_step(learners: Learners, loss_fn: TokenizerLoss, batches: Iterator[torch.Tensor], *, step_index: int, lr: float,
             grad_accum_steps: int, usage: torch.Tensor, prec: runtime.Precision) -> GANStepOutcome:
    """One optimizer step: the tokenizer over `grad_accum_steps` batches, the discriminator too from disc_start.

    Adds the codes each pass hits to `usage` (K,).
    """
    model = learners.model
    dev = next(model.parameters()).device
    adversarial = loss_fn.adversarial(step_index)
    for opt in learners.optimizers():
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
    passes: list[dict] = []
    for _ in range(grad_accum_steps):
        x = shards.to_model_range(next(batches).to(dev))  # (B, 3, H, W)
        with prec.autocast():
            rec, vq_loss, ids, z = model(x)
            loss, log = loss_fn.generator(x, rec, vq_loss, step_index, model.decoder.conv_out.weight)
        learners.scaler.scale(loss / grad_accum_steps).backward()
        if adversarial:
            with prec.autocast():
                d_loss, d_log = loss_fn.discriminator_loss(x, rec)
            learners.scaler.scale(d_loss / grad_accum_steps).backward()
            log.update(d_log)
        usage += torch.bincount(ids.flatten(), minlength=model.config.n_embed)
        passes.append(log)
    learners.scaler.step(learners.optimizer)
    if adversarial:
        learners.scaler.step(learners.d_optimizer)
    learners.scaler.update()
    return GANStepOutcome({k: float(np.mean([log[k] for log in passes])) for k in passes[0]}, z)


def restart_dead_codes(model: VQGAN, usage: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> int:
    """Re-seed codes unused since the last restart with random encoder outputs, then count afresh; returns how many."""
    dead = (usage == 0).nonzero().squeeze(1)
    usage.zero_()
    if len(dead) == 0:
        return 0
    pool = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, e)
    pick = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
    model.quantize.embedding.weight.data[dead] = pool[pick].to(model.quantize.embedding.weight.dtype)
    return len(dead)


def codebook_stats(counts: torch.Tensor) -> CodebookHealth:
    """Share of codes used and perplexity from (K,) counts."""
    freq = counts.float() / counts.sum().clamp(min=1)
    hit = freq[freq > 0]
    perplexity = torch.exp(-(hit * hit.log()).sum()).item()
    return CodebookHealth(int((counts > 0).sum()), (counts > 0).float().mean().item(), perplexity)


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, batch_size: int, prec: runtime.Precision,
             lpips_net: nn.Module | None) -> tuple[Reconstruction, torch.Tensor]:
    """Recon PSNR/SSIM (LPIPS when a network is given) and codebook health on `images` (N, 3, H, W).

    Returns them and the reconstructions of the first STRIP_IMAGES images.
    """
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    psnr_values, ssim_values, lpips_values, strip = [], [], [], None
    counts = torch.zeros(model.config.n_embed, dtype=torch.long)
    for first in range(0, len(images), batch_size):
        x = images[first:first + batch_size].to(dev)
        with prec.autocast():
            ids = model.encode(x)
            rec = model.decode_indices(ids)
        psnr_values.append(psnr(rec, x).cpu())
        ssim_values.append(ssim(rec, x).cpu())
        if lpips_net is not None:
            lpips_values.append(perceptual.lpips_distance(lpips_net, rec, x).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.config.n_embed)
        strip = rec[:STRIP_IMAGES].cpu() if strip is None else strip
    model.train(was_training)
    lpips_mean = torch.cat(lpips_values).mean().item() if lpips_values else None
    return Reconstruction(torch.cat(psnr_values).mean().item(), torch.cat(ssim_values).mean().item(),
                          codebook_stats(counts), lpips_mean), strip


def recon_strip(originals: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """Originals over reconstructions, side by side: (2H, N*W, 3) uint8."""
    rows = [np.concatenate(list(shards.as_uint8(images)), axis=1) for images in (originals, recon)]
    return np.concatenate(rows, axis=0)


@dataclass
class Validation:
    """The fixed val images every evaluation of a run reconstructs."""

    images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    batch_size: int
    prec: runtime.Precision
    lpips_net: nn.Module | None

    def evaluate_and_log(self, model: VQGAN, step: int) -> Reconstruction:
        """Recon metrics as MLflow val_* metrics and a reconstruction strip, at `step`."""
        recon, strip = evaluate(model, self.images, self.batch_size, self.prec, self.lpips_net)
        mlflow.log_metrics({f"val_{k}": v for k, v in recon.as_metrics().items()}, step=step)
        mlflow.log_image(recon_strip(self.images[:STRIP_IMAGES], strip), key="reconstructions", step=step)
        return recon


def log_training(progress: Progress, losses: dict[str, float], lr: float) -> dict[str, float]:
    """A curve row (and MLflow metrics) for the step just done; codebook health counts codes since the last restart."""
    health = codebook_stats(progress.usage.cpu())
    row = {"step": progress.done, **losses, "lr": lr,
           "codebook_usage": health.usage, "codebook_perplexity": health.perplexity}
    progress.curve.append({c: row.get(c, math.nan) for c in CURVE_COLUMNS})
    mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=progress.done)
    return row


def lpips_networks(p: VQGANParams, dev: torch.device) -> tuple[nn.Module | None, nn.Module | None, dict[str, str]]:
    """(loss network, metric network, reasons for what is missing). Never a randomly initialised trunk."""
    unavailable = {}
    metric = perceptual.resolve_lpips(dev, p.download_weights, "alex")
    if not metric.available:
        unavailable["recon_lpips"] = metric.reason
    loss = None
    if p.perceptual_weight > 0:
        backbone = metric if p.perceptual_trunk == "alex" else perceptual.resolve_lpips(dev, p.download_weights, p.perceptual_trunk)
        loss = backbone.network
        if not backbone.available:
            unavailable["perceptual_loss"] = backbone.reason
            print(f"finetune_vqgan: training without the perceptual term: {backbone.reason}")
    return loss, metric.network, unavailable


def due(done: int, every: int, steps: int) -> bool:
    """Whether a periodic action (every 0: never) falls after `done` steps; the last step has its own."""
    return every > 0 and done % every == 0 and done < steps


def train(p: VQGANParams, *, image_size: int, shards_dir: Path, state_path: Path,
          init_path: Path | None = None) -> VQGANResult:
    """Train from the params' initialisation (or resume a killed run) and evaluate on val."""
    dev = runtime.setup(p.seed)
    prec = runtime.precision(p.precision, dev)
    # The decided precision, not "auto": a run never resumes in another precision than it began in.
    resume = Resume(state_path, {**p.model_dump(mode="json"), "precision": prec.name})
    state = resume.load()
    # The order of construction below is the order of draws from the seeded RNG: keep it.
    if state:  # resuming takes the discriminator, too, from the saved state, never from the init file
        learners = build_learners(p, resumed_model(state).to(dev), dev, prec)
    else:
        learners = initial_learners(p, image_size, init_path, dev, prec)
    model = learners.model
    loss_net, lpips_net, unavailable = lpips_networks(p, dev)
    loss_fn = TokenizerLoss(LossConfig(p.perceptual_weight, p.disc_weight, p.disc_start), loss_net, learners.discriminator)
    val_images, _ = shards.load_split(shards.shard_urls(shards_dir, "val"), limit=p.eval_images)
    validation = Validation(val_images, p.batch_size * 2, prec, lpips_net)
    if state:
        progress = restore(learners, state, dev)
    else:
        usage = torch.zeros(model.config.n_embed, dtype=torch.long, device=dev)
        progress = Progress(0, usage, validation.evaluate_and_log(model, step=0))
    batches = shards.MeteredBatches(shards.train_batches(shards.shard_urls(shards_dir, "train"), p.batch_size, p.seed,
                                                         p.num_workers, skip=progress.done * p.grad_accum_steps))
    model.train()
    bar = tqdm(total=p.steps, initial=progress.done, desc="vqgan", unit="step")
    while progress.done < p.steps:
        lr = warmup_cosine(progress.done, p.steps, p.warmup_steps, p.lr, p.lr * 0.1)
        outcome = gan_step(learners, loss_fn, batches, step_index=progress.done, lr=lr,
                           grad_accum_steps=p.grad_accum_steps, usage=progress.usage, prec=prec)
        progress.done += 1
        bar.update()
        if progress.done % LOG_EVERY == 0 or progress.done == p.steps:
            row = log_training(progress, outcome.losses, lr)
            bar.set_postfix({**{k: f"{row[k]:.3f}" for k in ("l1", "perceptual", "g_loss", "d_loss") if k in row},
                             "input wait": f"{batches.throughput()['input_wait_share']:.0%}"})
        if due(progress.done, p.dead_code_restart_every, p.steps):
            draws = torch.Generator().manual_seed(p.seed * 1_000_003 + progress.done)
            restart_dead_codes(model, progress.usage, outcome.z, draws)
        if due(progress.done, p.eval_every, p.steps):
            recon = validation.evaluate_and_log(model, step=progress.done)
            if recon.psnr > progress.best["recon_psnr"]:
                progress.best = {"recon_psnr": recon.psnr, "step": progress.done}
        if due(progress.done, p.checkpoint_every, p.steps):
            save_checkpoint(resume, learners, progress)
    bar.close()
    throughput = batches.throughput()  # this run's steps (a resumed run: since the restart), evaluations included
    mlflow.log_metrics(throughput, step=p.steps)
    batches.close()  # stops the loader's workers now rather than at garbage collection
    final = validation.evaluate_and_log(model, step=p.steps)
    return VQGANResult(model.eval(), VQGANMetrics(final, progress.initial, **throughput), prec, unavailable, progress.curve)
