"""Tokenizer training: from scratch or fine-tuning a taming checkpoint, with taming's losses.

L1 + LPIPS reconstruction, the codebook loss, and a PatchGAN hinge term with the
adaptive weight (models/losses.py). `train_parts` chooses what learns; the rest is
frozen (the reference fine-tunes decoder and codebook). Batches come from a
stream that depends only on the seed, and everything random is seeded by
(seed, step), so a resumed run ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from maskgit_inpaint import metrics, perceptual, runtime
from maskgit_inpaint.config import VQGANParams
from maskgit_inpaint.data import shards
from maskgit_inpaint.models.losses import LossConfig, PatchDiscriminator, TokenizerLoss
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training.resume import Resume
from maskgit_inpaint.training.schedule import warmup_cosine

LOG_EVERY = 25
STRIP_IMAGES = 8  # val images in the MLflow reconstruction strip
PART_MODULES = {"encoder": ("encoder", "quant_conv"), "codebook": ("quantize",), "decoder": ("post_quant_conv", "decoder")}
CURVE_COLUMNS = ["step", "loss", "l1", "perceptual", "vq", "g_loss", "d_weight", "d_loss", "lr", "codebook_usage", "codebook_perplexity"]


@dataclass
class VQGANResult:
    model: VQGAN
    metrics: dict  # val recon quality and codebook health at the end and at initialisation (init_*)
    precision: runtime.Precision  # what the run trained in, on which hardware
    unavailable: dict = field(default_factory=dict)  # metric or loss term -> why it is missing
    curve: list[dict] = field(default_factory=list)  # one row per LOG_EVERY steps (CURVE_COLUMNS)


def model_config(p: VQGANParams, image_size: int) -> VQGANConfig:
    return VQGANConfig(
        resolution=image_size, ch=p.ch, ch_mult=p.ch_mult, num_res_blocks=p.num_res_blocks,
        attn_resolutions=p.attn_resolutions, z_channels=p.z_channels, embed_dim=p.embed_dim,
        n_embed=p.n_embed, beta=p.beta,
    )


def initial_model(p: VQGANParams, image_size: int, init_path: Path | None) -> VQGAN:
    """Random weights, or the taming checkpoint, which must match the params' architecture."""
    config = model_config(p, image_size)
    return VQGAN(config) if init_path is None else VQGAN.from_taming_checkpoint(init_path, config, image_size)


def trainable_parameters(model: VQGAN, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze everything but `parts`; returns the parameters that train."""
    model.requires_grad_(False)
    for part in parts:
        for name in PART_MODULES[part]:
            getattr(model, name).requires_grad_(True)
    return [q for q in model.parameters() if q.requires_grad]


def restart_dead_codes(model: VQGAN, usage: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> int:
    """Re-seed codes unused since the last restart with random encoder outputs; returns how many."""
    dead = (usage == 0).nonzero().squeeze(1)
    if len(dead) == 0:
        return 0
    pool = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, e)
    pick = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
    model.quantize.embedding.weight.data[dead] = pool[pick].to(model.quantize.embedding.weight.dtype)
    return len(dead)


def codebook_stats(counts: torch.Tensor) -> dict:
    """Share of codes used and perplexity (exp entropy of code frequencies) from (K,) counts."""
    p = counts.float() / counts.sum().clamp(min=1)
    used = p[p > 0]
    return {"codebook_used": int((counts > 0).sum()), "codebook_usage": (counts > 0).float().mean().item(),
            "codebook_perplexity": torch.exp(-(used * used.log()).sum()).item()}


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, batch_size: int, prec: runtime.Precision, lpips_net: nn.Module | None) -> tuple[dict, torch.Tensor]:
    """Recon PSNR/SSIM (LPIPS when a network is given) and codebook health on `images` (N, 3, H, W).

    Returns the metrics and the reconstructions of the first STRIP_IMAGES images.
    """
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    psnr, ssim, lp, counts, strip = [], [], [], torch.zeros(model.config.n_embed, dtype=torch.long), None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev)
        with prec.autocast():
            ids = model.encode(x)
            rec = model.decode_indices(ids)
        psnr.append(metrics.psnr(rec, x).cpu())
        ssim.append(metrics.ssim(rec, x).cpu())
        if lpips_net is not None:
            lp.append(perceptual.lpips_distance(lpips_net, rec, x).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.config.n_embed)
        strip = rec[:STRIP_IMAGES].cpu() if strip is None else strip
    model.train(was_training)
    result = {"recon_psnr": torch.cat(psnr).mean().item(), "recon_ssim": torch.cat(ssim).mean().item()}
    if lp:
        result["recon_lpips"] = torch.cat(lp).mean().item()
    return {**result, **codebook_stats(counts)}, strip


def recon_strip(originals: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """Originals over reconstructions, side by side: (2H, N*W, 3) uint8."""
    rows = [np.concatenate(list(shards.as_uint8(images)), axis=1) for images in (originals, recon)]
    return np.concatenate(rows, axis=0)


def lpips_networks(p: VQGANParams, dev: torch.device) -> tuple[nn.Module | None, nn.Module | None, dict]:
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


def train(p: VQGANParams, image_size: int, shards_dir: Path, state_path: Path, init_path: Path | None = None) -> VQGANResult:
    """Train from the params' initialisation (or resume a killed run) and evaluate on val."""
    dev = runtime.setup(p.seed)
    prec = runtime.precision(p.precision, dev)
    # The decided precision, not "auto": a run never resumes in another precision than it began in.
    resume = Resume(state_path, {**p.model_dump(mode="json"), "precision": prec.name})
    state = resume.load()
    # A resumed run takes its architecture from the saved state, not from the params or the init file.
    model = VQGAN(VQGANConfig.from_dict(state["model_config"])) if state else initial_model(p, image_size, init_path)
    model.to(dev)
    # Adam betas (0.5, 0.9) as taming-transformers trains its VQGAN and discriminator.
    optimizer = torch.optim.Adam(trainable_parameters(model, p.train_parts), lr=p.lr, betas=(0.5, 0.9))
    discriminator = PatchDiscriminator(3, p.disc_ch, p.disc_layers).to(dev) if p.disc_weight > 0 else None
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=p.lr, betas=(0.5, 0.9)) if discriminator else None
    scaler = prec.grad_scaler()  # fp16 only: one scale for both losses, stepped per optimizer
    loss_net, lpips_net, unavailable = lpips_networks(p, dev)
    loss_fn = TokenizerLoss(LossConfig(p.perceptual_weight, p.disc_weight, p.disc_start), loss_net, discriminator)
    val_images, _ = shards.load_split(shards.shard_urls(shards_dir, "val"), limit=p.eval_images)
    usage = torch.zeros(model.config.n_embed, dtype=torch.long, device=dev)
    start, curve, best = 0, [], {"recon_psnr": -math.inf, "step": 0}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if discriminator:
            discriminator.load_state_dict(state["discriminator"])
            d_optimizer.load_state_dict(state["d_optimizer"])
        usage = state["usage"].to(dev)
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        init_metrics = state["init_metrics"]
        start, curve, best = state["step"], state["history"], state["best"]
    else:
        init_metrics, init_strip = evaluate(model, val_images, p.batch_size * 2, prec, lpips_net)
        mlflow.log_metrics({f"val_{k}": v for k, v in init_metrics.items()}, step=0)
        mlflow.log_image(recon_strip(val_images[:STRIP_IMAGES], init_strip), key="reconstructions", step=0)
    batches = shards.MeteredBatches(shards.train_batches(shards.shard_urls(shards_dir, "train"), p.batch_size, p.seed,
                                                         p.num_workers, skip=start * p.grad_accum_steps))
    model.train()
    bar = tqdm(range(start, p.steps), desc="vqgan", initial=start, total=p.steps, unit="step")
    for step in bar:
        lr = warmup_cosine(step, p.steps, p.warmup_steps, p.lr, p.lr * 0.1)
        for opt in filter(None, (optimizer, d_optimizer)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        parts: list[dict] = []
        for _ in range(p.grad_accum_steps):
            x = shards.to_model_range(next(batches).to(dev))  # (B, 3, H, W)
            with prec.autocast():
                rec, vq_loss, ids, z = model(x)
                loss, log = loss_fn.generator(x, rec, vq_loss, step, model.decoder.conv_out.weight)
            scaler.scale(loss / p.grad_accum_steps).backward()
            if loss_fn.adversarial(step):
                with prec.autocast():
                    d_loss, d_log = loss_fn.discriminator_loss(x, rec)
                scaler.scale(d_loss / p.grad_accum_steps).backward()
                log.update(d_log)
            usage += torch.bincount(ids.flatten(), minlength=model.config.n_embed)
            parts.append(log)
        scaler.step(optimizer)
        if loss_fn.adversarial(step):
            scaler.step(d_optimizer)
        scaler.update()
        done = step + 1
        if done % LOG_EVERY == 0 or done == p.steps:
            health = codebook_stats(usage.cpu())  # codes hit since the last restart
            row = {"step": done, **{k: float(np.mean([q[k] for q in parts])) for k in parts[0]}, "lr": lr,
                   "codebook_usage": health["codebook_usage"], "codebook_perplexity": health["codebook_perplexity"]}
            curve.append({c: row.get(c, math.nan) for c in CURVE_COLUMNS})
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
            bar.set_postfix({**{k: f"{row[k]:.3f}" for k in ("l1", "perceptual", "g_loss", "d_loss") if k in row},
                             "input wait": f"{batches.throughput()['input_wait_share']:.0%}"})
        if p.dead_code_restart_every and done % p.dead_code_restart_every == 0 and done < p.steps:
            restart_dead_codes(model, usage, z, torch.Generator().manual_seed(p.seed * 1_000_003 + done))
            usage.zero_()
        if done % p.eval_every == 0 and done < p.steps:
            val, strip = evaluate(model, val_images, p.batch_size * 2, prec, lpips_net)
            mlflow.log_metrics({f"val_{k}": v for k, v in val.items()}, step=done)
            mlflow.log_image(recon_strip(val_images[:STRIP_IMAGES], strip), key="reconstructions", step=done)
            if val["recon_psnr"] > best["recon_psnr"]:
                best = {"recon_psnr": val["recon_psnr"], "step": done}
        if done % p.checkpoint_every == 0 and done < p.steps:
            extra = {"usage": usage, "init_metrics": init_metrics, "scaler": scaler.state_dict()}
            if discriminator:
                extra.update(discriminator=discriminator.state_dict(), d_optimizer=d_optimizer.state_dict())
            resume.save(model, optimizer, done, best, curve, extra)
    throughput = batches.throughput()  # this run's steps (a resumed run: since the restart), evaluations included
    mlflow.log_metrics(throughput, step=p.steps)
    batches.close()  # stops the loader's workers now rather than at garbage collection
    final, strip = evaluate(model, val_images, p.batch_size * 2, prec, lpips_net)
    mlflow.log_metrics({f"val_{k}": v for k, v in final.items()}, step=p.steps)
    mlflow.log_image(recon_strip(val_images[:STRIP_IMAGES], strip), key="reconstructions", step=p.steps)
    result = {**final, **{f"init_{k}": v for k, v in init_metrics.items()}, **throughput}
    return VQGANResult(model.eval(), result, prec, unavailable, curve)
