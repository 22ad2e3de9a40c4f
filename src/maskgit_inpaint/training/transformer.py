"""Masked visual token modeling (MVTM) on token arrays: no tokenizer in the loop.

Per image: r ~ U(0, 1), mask ceil(gamma(r) * N) tokens uniformly (or a fixed
ratio), cross-entropy on the masked positions only. Batches and masks come from
a generator seeded by (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from maskgit_inpaint import runtime
from maskgit_inpaint.config import TransformerParams
from maskgit_inpaint.data import tokens as token_store
from maskgit_inpaint.masks import random_token_mask
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.sampling import gamma
from maskgit_inpaint.training.resume import Resume
from maskgit_inpaint.training.schedule import warmup_cosine

LOG_EVERY = 25
VAL_SEED = 12345  # val masks are the same at every evaluation and in every run


@dataclass
class TransformerResult:
    model: MaskedTokenTransformer
    metrics: dict  # final val masked-token accuracy and NLL, best accuracy
    curve: list[dict] = field(default_factory=list)


def mask_counts(batch: int, n_tokens: int, p: TransformerParams, generator: torch.Generator) -> torch.Tensor:
    """(B,) number of tokens to mask per image: ceil(gamma(r) * N), r ~ U(0, 1), or a fixed ratio."""
    if p.fixed_mask_ratio is not None:
        ratio = torch.full((batch,), p.fixed_mask_ratio, dtype=torch.float64)
    else:
        ratio = gamma(p.train_mask_schedule, torch.rand(batch, generator=generator, dtype=torch.float64), n_tokens)
    return torch.ceil(ratio * n_tokens).long().clamp(1, n_tokens)


def masked_loss(model: MaskedTokenTransformer, x: torch.Tensor, mask: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on masked positions only; returns (loss, logits of masked positions (M, K))."""
    inputs = torch.where(mask, torch.full_like(x, model.config.mask_id), x)  # (B, N)
    logits = model(inputs)[mask].float()  # (M, K)
    return F.cross_entropy(logits, x[mask], label_smoothing=smoothing), logits


@torch.no_grad()
def evaluate(model: MaskedTokenTransformer, val: torch.Tensor, ratio: float, batch_size: int, amp: bool) -> dict:
    """Masked-token accuracy and NLL on val at a fixed mask ratio, with fixed masks."""
    dev = next(model.parameters()).device
    model.eval()
    generator = torch.Generator().manual_seed(VAL_SEED)
    n_tokens = val.shape[1]
    correct = nll = total = 0.0
    for start in range(0, len(val), batch_size):
        x = val[start:start + batch_size]
        counts = torch.full((len(x),), max(1, math.ceil(ratio * n_tokens)))
        mask = random_token_mask(counts, n_tokens, generator).to(dev)
        x = x.to(dev)
        with runtime.autocast(dev, amp):
            loss, logits = masked_loss(model, x, mask, smoothing=0.0)
        correct += (logits.argmax(-1) == x[mask]).sum().item()
        nll += loss.item() * mask.sum().item()
        total += mask.sum().item()
    model.train()
    return {"val_accuracy": correct / total, "val_nll": nll / total}


def train(p: TransformerParams, tokens_dir: Path, state_path: Path) -> TransformerResult:
    dev = runtime.setup(p.seed)
    meta = token_store.load_meta(tokens_dir)
    train_tokens = token_store.load(tokens_dir, "train")
    val = torch.from_numpy(token_store.load(tokens_dir, "val").astype(np.int64))
    resume = Resume(state_path, p.model_dump(mode="json"))
    state = resume.load()
    config = (
        TransformerConfig(**state["model_config"]) if state else
        TransformerConfig(
            codebook_size=meta["codebook_size"], n_tokens=train_tokens.shape[1],
            n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd, dropout=p.dropout,
        )
    )
    model = MaskedTokenTransformer(config).to(dev)
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2 and "emb" not in n]
    no_decay = [q for n, q in model.named_parameters() if q.dim() < 2 or "emb" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr, betas=p.betas,
    )
    start, curve, best = 0, [], {"val_accuracy": 0.0, "step": 0}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve, best = state["step"], state["history"], state["best"]
    generator = torch.Generator()
    model.train()
    bar = tqdm(range(start, p.steps), desc="transformer", initial=start, total=p.steps, unit="step")
    for step in bar:
        lr = warmup_cosine(step, p.steps, p.warmup_steps, p.lr, p.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator.manual_seed(p.seed * 1_000_003 + step)
        index = torch.randint(len(train_tokens), (p.batch_size,), generator=generator).sort().values.numpy()
        x = torch.from_numpy(train_tokens[index].astype(np.int64))  # (B, N)
        mask = random_token_mask(mask_counts(len(x), x.shape[1], p, generator), x.shape[1], generator)
        with runtime.autocast(dev, p.amp):
            loss, _ = masked_loss(model, x.to(dev), mask.to(dev), p.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        done = step + 1
        if done % LOG_EVERY == 0 or done == p.steps:
            row = {"step": done, "train_loss": loss.item(), "lr": lr}
            if done % p.eval_every == 0 or done == p.steps:
                row.update(evaluate(model, val, p.eval_mask_ratio, p.batch_size * 4, p.amp))
                if row["val_accuracy"] > best["val_accuracy"]:
                    best = {"val_accuracy": row["val_accuracy"], "step": done}
                bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{row['val_accuracy']:.3f}")
            curve.append(row)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
        if done % p.checkpoint_every == 0 and done < p.steps:
            resume.save(model, optimizer, done, best, curve)
    final = {k: v for k, v in curve[-1].items() if k.startswith("val_")}
    result = {**final, "best_val_accuracy": best["val_accuracy"], "best_step": best["step"],
              "eval_mask_ratio": p.eval_mask_ratio, "steps": p.steps}
    return TransformerResult(model.eval(), result, curve)
