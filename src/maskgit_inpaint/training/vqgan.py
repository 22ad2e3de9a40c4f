"""Tokenizer training: reconstruction + vector-quantization losses on the train shards."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F
from tqdm import tqdm

from maskgit_inpaint import metrics, runtime
from maskgit_inpaint.config import VQGANParams
from maskgit_inpaint.data import shards
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training.resume import Resume
from maskgit_inpaint.training.schedule import warmup_cosine

LOG_EVERY = 25


@dataclass
class VQGANResult:
    model: VQGAN
    metrics: dict  # recon quality and codebook usage on val images
    curve: list[dict] = field(default_factory=list)  # one row per LOG_EVERY steps


def model_config(p: VQGANParams, image_size: int) -> VQGANConfig:
    return VQGANConfig(
        resolution=image_size, ch=p.ch, ch_mult=p.ch_mult, num_res_blocks=p.num_res_blocks,
        attn_resolutions=p.attn_resolutions, z_channels=p.z_channels, embed_dim=p.embed_dim,
        n_embed=p.n_embed, beta=p.beta,
    )


def restart_dead_codes(model: VQGAN, usage: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> int:
    """Re-seed codes unused since the last restart with random encoder outputs; returns how many."""
    dead = (usage == 0).nonzero().squeeze(1)
    if len(dead) == 0:
        return 0
    pool = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, e)
    pick = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
    model.quantize.embedding.weight.data[dead] = pool[pick].to(model.quantize.embedding.weight.dtype)
    return len(dead)


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, batch_size: int, amp: bool) -> dict:
    """Reconstruction PSNR/SSIM and codebook usage on `images` (N, 3, H, W)."""
    dev = next(model.parameters()).device
    model.eval()
    psnr, ssim, counts = [], [], torch.zeros(model.config.n_embed)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev)
        with runtime.autocast(dev, amp):
            ids = model.encode(x)
            rec = model.decode_indices(ids)
        psnr.append(metrics.psnr(rec, x).cpu())
        ssim.append(metrics.ssim(rec, x).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.config.n_embed)
    model.train()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
    return {
        "recon_psnr": torch.cat(psnr).mean().item(),
        "recon_ssim": torch.cat(ssim).mean().item(),
        "codebook_used": int((counts > 0).sum()),
        "codebook_usage": (counts > 0).float().mean().item(),
        "codebook_perplexity": perplexity.item(),
    }


def train(p: VQGANParams, image_size: int, shards_dir: Path, state_path: Path) -> VQGANResult:
    """Train from the params' initialisation (or resume a killed run) and evaluate on val."""
    dev = runtime.setup(p.seed)
    resume = Resume(state_path, p.model_dump(mode="json"))
    state = resume.load()
    config = VQGANConfig.from_dict(state["model_config"]) if state else model_config(p, image_size)
    model = VQGAN(config).to(dev)
    # Adam betas (0.5, 0.9) as taming-transformers trains its VQGAN.
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.5, 0.9))
    start, curve = 0, []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, curve = state["step"], state["history"]
    val_images, _ = shards.load_split(shards.shard_urls(shards_dir, "val"), limit=p.eval_images)
    batches = shards.train_batches(shards.shard_urls(shards_dir, "train"), p.batch_size, p.seed + start, p.num_workers)
    generator = torch.Generator().manual_seed(p.seed + start)
    usage = torch.zeros(config.n_embed, device=dev)
    model.train()
    bar = tqdm(range(start, p.steps), desc="vqgan", initial=start, total=p.steps, unit="step")
    for step in bar:
        lr = warmup_cosine(step, p.steps, p.warmup_steps, p.lr, p.lr * 0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = next(batches).to(dev)  # (B, 3, H, W)
        with runtime.autocast(dev, p.amp):
            rec, vq_loss, ids, z = model(x)
        rec_loss = F.l1_loss(rec.float(), x)
        loss = rec_loss + vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(ids.flatten(), minlength=config.n_embed)
        if p.dead_code_restart_every and (step + 1) % p.dead_code_restart_every == 0 and step + 1 < p.steps:
            restart_dead_codes(model, usage, z, generator)
            usage.zero_()
        if (step + 1) % LOG_EVERY == 0 or step + 1 == p.steps:
            row = {"step": step + 1, "loss": loss.item(), "l1": rec_loss.item(), "vq": vq_loss.item(), "lr": lr}
            curve.append(row)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step + 1)
            bar.set_postfix(l1=f"{rec_loss.item():.4f}", vq=f"{vq_loss.item():.4f}")
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
            resume.save(model, optimizer, step + 1, best={}, history=curve)
    result = evaluate(model, val_images, p.batch_size * 2, p.amp)
    mlflow.log_metrics(result, step=p.steps)
    return VQGANResult(model.eval(), result, curve)
