"""Masked visual token modeling (MVTM) on token arrays: no tokenizer in the loop.

Per image: r ~ U(0, 1), mask ceil(gamma(r) * N) tokens uniformly (or a fixed
ratio), cross-entropy on the masked positions only. Batches and masks come from
a generator seeded by (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would have. Under torchrun every process draws the same global
batch and trains on its own slice of it (DistributedDataParallel averages the
gradients); rank 0 evaluates, logs and saves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maskgit_inpaint import runtime
from maskgit_inpaint.config import TransformerParams
from maskgit_inpaint.data import tokens as token_store
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.schedules import gamma
from maskgit_inpaint.training.distributed import Processes
from maskgit_inpaint.training.masking import random_token_mask
from maskgit_inpaint.training.resume import Resume
from maskgit_inpaint.training.schedule import warmup_cosine

LOG_EVERY = 25
VAL_SEED = 12345  # val masks are the same at every evaluation and in every run


@dataclass(frozen=True)
class ValScores:
    """Masked-token figures on val at one mask ratio."""

    accuracy: float
    nll: float  # per masked token


def val_columns(scores: dict[float, ValScores]) -> dict[str, float]:
    """Val figures by mask ratio -> the val curve's columns (and metric keys): per ratio, then their means."""
    columns = {}
    for ratio, score in scores.items():
        columns[f"val_accuracy_{ratio}"], columns[f"val_nll_{ratio}"] = score.accuracy, score.nll
    columns["val_accuracy"] = float(np.mean([score.accuracy for score in scores.values()]))
    columns["val_nll"] = float(np.mean([score.nll for score in scores.values()]))
    return columns


@dataclass(frozen=True)
class TransformerMetrics:
    """What a run measured (rank 0); `flat()` is metrics/transformer.json."""

    val: dict[float, ValScores]  # at the last step, by eval mask ratio
    baseline_accuracy: float  # of always answering the train set's most frequent token
    best_val_accuracy: float  # the best mean over the ratios of any evaluation ...
    best_step: int  # ... and the step it was measured at
    parameters: int  # of the model
    steps: int
    processes: int
    tokens_per_s: float  # training throughput in the last log window
    tflops_per_s: float | None  # model TFLOP/s per GPU in that window; None on a CPU
    mfu: float | None  # model FLOPs utilisation in that window; None on a CPU or a GPU whose peak is not in runtime's table

    def flat(self) -> dict[str, int | float]:
        """One level, numbers only (a figure that was not measured is left out)."""
        scalars = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "val"}
        return {**val_columns(self.val), **{name: value for name, value in scalars.items() if value is not None}}


@dataclass
class TransformerResult:
    model: MaskedTokenTransformer
    precision: runtime.Precision  # what the run trained in, on which hardware
    metrics: TransformerMetrics | None  # None on every process but rank 0, which evaluates
    curve: list[dict] = field(default_factory=list)


def training_flops_per_token(config: TransformerConfig) -> float:
    """Forward + backward FLOPs per token: 6 per matmul weight, plus attention scores and mixing (12 * L * C * N)."""
    c = config
    per_layer = 4 * c.n_embd * c.n_embd + 2 * c.mlp_ratio * c.n_embd * c.n_embd  # qkv + proj, mlp
    matmul_weights = c.n_layer * per_layer + c.n_embd * c.codebook_size  # + the output head
    return 6 * matmul_weights + 12 * c.n_layer * c.n_embd * c.n_tokens


def flops_figures(flops_per_second: float, device_name: str) -> dict[str, float]:
    """Curve columns of one GPU's achieved model FLOP/s: TFLOP/s, and MFU where runtime knows the GPU's peak."""
    utilisation = runtime.mfu(flops_per_second, device_name)
    return {"tflops_per_s": flops_per_second / 1e12, **({} if utilisation is None else {"mfu": utilisation})}


def model_config(p: TransformerParams, codebook_size: int, n_tokens: int) -> TransformerConfig:
    return TransformerConfig(
        codebook_size=codebook_size, n_tokens=n_tokens, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
        mlp_ratio=p.mlp_ratio, dropout=p.dropout, local_mixing=p.local_mixing,
    )


def most_frequent_token_accuracy(train_tokens: np.ndarray, val: torch.Tensor) -> float:
    """Accuracy of always answering the train set's most frequent code (uniform masks hit every position alike)."""
    counts = np.zeros(int(max(train_tokens.max(), val.max())) + 1, dtype=np.int64)
    for start in range(0, len(train_tokens), 65536):  # chunks: the array is memory-mapped and may be large
        counts += np.bincount(np.asarray(train_tokens[start:start + 65536]).ravel(), minlength=len(counts))
    return (val == int(counts.argmax())).float().mean().item()


def mask_counts(batch: int, n_tokens: int, p: TransformerParams, generator: torch.Generator) -> torch.Tensor:
    """(B,) number of tokens to mask per image: ceil(gamma(r) * N), r ~ U(0, 1), or a fixed ratio."""
    if p.fixed_mask_ratio is not None:
        ratio = torch.full((batch,), p.fixed_mask_ratio, dtype=torch.float64)
    else:
        ratio = gamma(p.train_mask_schedule, torch.rand(batch, generator=generator, dtype=torch.float64), n_tokens)
    return torch.ceil(ratio * n_tokens).long().clamp(1, n_tokens)


def masked_loss(model: nn.Module, mask_id: int, x: torch.Tensor, mask: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on masked positions only; returns (loss, logits of masked positions (M, K)).

    `model` may be the transformer or its DistributedDataParallel / compiled wrapper.
    """
    inputs = torch.where(mask, torch.full_like(x, mask_id), x)  # (B, N)
    logits = model(inputs)[mask].float()  # (M, K)
    return F.cross_entropy(logits, x[mask], label_smoothing=smoothing), logits


@torch.no_grad()
def evaluate(model: MaskedTokenTransformer, val: torch.Tensor, ratios: tuple[float, ...], batch_size: int,
             prec: runtime.Precision) -> dict[float, ValScores]:
    """Masked-token accuracy and NLL on val at each of the mask ratios, with fixed masks."""
    dev = next(model.parameters()).device
    model.eval()
    n_tokens = val.shape[1]
    result = {}
    for ratio in ratios:
        generator = torch.Generator().manual_seed(VAL_SEED)
        correct = nll = total = 0.0
        for start in range(0, len(val), batch_size):
            x = val[start:start + batch_size]
            counts = torch.full((len(x),), max(1, math.ceil(ratio * n_tokens)))
            mask = random_token_mask(counts, n_tokens, generator).to(dev)
            x = x.to(dev)
            with prec.autocast():
                loss, logits = masked_loss(model, model.config.mask_id, x, mask, smoothing=0.0)
            correct += (logits.argmax(-1) == x[mask]).sum().item()
            nll += loss.item() * mask.sum().item()
            total += mask.sum().item()
        result[ratio] = ValScores(accuracy=correct / total, nll=nll / total)
    model.train()
    return result


def train(p: TransformerParams, tokens_dir: Path, state_path: Path, procs: Processes, dev: torch.device) -> TransformerResult:
    if p.batch_size % procs.world:
        raise ValueError(f"transformer.batch_size ({p.batch_size}) must be divisible by the {procs.world} processes")
    prec = runtime.precision(p.precision, dev)
    meta = token_store.load_meta(tokens_dir)
    train_tokens = token_store.load(tokens_dir, "train")
    val = torch.from_numpy(token_store.load(tokens_dir, "val").astype(np.int64))
    # The decided precision, not "auto": a run never resumes in another precision than it began in.
    resume = Resume(state_path, {**p.model_dump(mode="json"), "precision": prec.name})
    state = resume.load()
    config = (TransformerConfig(**state["model_config"]) if state
              else model_config(p, meta.codebook_size, train_tokens.shape[1]))
    model = MaskedTokenTransformer(config).to(dev)
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2 and "emb" not in n]
    no_decay = [q for n, q in model.named_parameters() if q.dim() < 2 or "emb" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr, betas=p.betas,
    )
    scaler = prec.grad_scaler()  # fp16 only
    start, curve, best = 0, [], {"val_accuracy": 0.0, "step": 0}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, curve, best = state["step"], state["history"], state["best"]
    stepper = DistributedDataParallel(model) if procs.world > 1 else model  # gradients averaged across processes
    stepper = torch.compile(stepper) if p.compile else stepper
    baseline = most_frequent_token_accuracy(train_tokens, val) if procs.main else math.nan
    flops_per_step = training_flops_per_token(config) * p.batch_size * config.n_tokens  # of the global batch
    generator = torch.Generator()
    model.train()
    bar = tqdm(range(start, p.steps), desc="transformer", initial=start, total=p.steps, unit="step", disable=not procs.main)
    window_began, window_start = runtime.clock(dev), start  # throughput is timed between logs, evaluation left out
    scores: dict[float, ValScores] = {}  # of the latest evaluation; the last step always evaluates
    for step in bar:
        lr = warmup_cosine(step, p.steps, p.warmup_steps, p.lr, p.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator.manual_seed(p.seed * 1_000_003 + step)
        # The same global batch and masks in every process; each trains on its slice.
        index = torch.randint(len(train_tokens), (p.batch_size,), generator=generator).sort().values.numpy()
        x = torch.from_numpy(train_tokens[index].astype(np.int64))  # (B, N)
        mask = random_token_mask(mask_counts(len(x), x.shape[1], p, generator), x.shape[1], generator)
        x, mask = x[procs.rank::procs.world], mask[procs.rank::procs.world]  # (B / world, N)
        with prec.autocast():
            loss, _ = masked_loss(stepper, config.mask_id, x.to(dev), mask.to(dev), p.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        done = step + 1
        if procs.main and (done % LOG_EVERY == 0 or done == p.steps):
            seconds = (runtime.clock(dev) - window_began) / (done - window_start)  # per step
            row = {"step": done, "train_loss": loss.item(), "lr": lr, "tokens_per_s": p.batch_size * config.n_tokens / seconds}
            if dev.type == "cuda":  # a CPU has no dense tensor-core peak to measure against
                row.update(flops_figures(flops_per_step / seconds / procs.world, prec.hardware.name))
            if done % p.eval_every == 0 or done == p.steps:
                scores = evaluate(model, val, p.eval_mask_ratios, p.batch_size * 4, prec)
                row.update(val_columns(scores))
                if row["val_accuracy"] > best["val_accuracy"]:
                    best = {"val_accuracy": row["val_accuracy"], "step": done}
            curve.append(row)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
            bar.set_postfix({"loss": f"{loss.item():.3f}", "tok/s": f"{row['tokens_per_s']:.0f}",
                             **({"TFLOP/s": f"{row['tflops_per_s']:.1f}"} if "tflops_per_s" in row else {}),
                             **({"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {}),
                             **({"val_acc": f"{row['val_accuracy']:.3f}"} if "val_accuracy" in row else {})})
            window_began, window_start = runtime.clock(dev), done
        if procs.main and done % p.checkpoint_every == 0 and done < p.steps:
            began = runtime.clock(dev)
            resume.save(model, optimizer, done, best, curve, {"scaler": scaler.state_dict()})
            window_began += runtime.clock(dev) - began  # saving is not training: left out of the throughput window
    if not procs.main:
        return TransformerResult(model.eval(), prec, None, curve)
    last = curve[-1]  # logged at the last step, with `scores`
    metrics = TransformerMetrics(val=scores, baseline_accuracy=baseline, best_val_accuracy=best["val_accuracy"],
                                 best_step=best["step"], parameters=sum(q.numel() for q in model.parameters()),
                                 steps=p.steps, processes=procs.world, tokens_per_s=last["tokens_per_s"],
                                 tflops_per_s=last.get("tflops_per_s"), mfu=last.get("mfu"))
    return TransformerResult(model.eval(), prec, metrics, curve)
