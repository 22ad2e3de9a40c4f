"""Does `precision: auto` pick the faster precision on this machine?

The embedded profile's three workloads, each under fp32 and under bf16 autocast
(runtime.Precision, forced), on the same models and data (random weights: speed
does not depend on them):
- tokenizer: one optimizer step of the VQGAN and its PatchGAN discriminator at
  `vqgan.batch_size` (L1 + codebook + adaptive adversarial loss, both backwards,
  both Adam steps), as finetune_vqgan trains once the discriminator is on;
- transformer: one MVTM step at `transformer.batch_size` (masked cross-entropy,
  AdamW, clipping), as train_transformer;
- grid decode: one trajectory of DECODE_IMAGES center-masked images (cosine, T
  steps) with pixels decoded at SWEET_SPOTS, chunked as the grid runs it.
Every (workload, precision) runs once per round, in turn, for ROUNDS rounds after
a warm-up round; figures are medians over rounds. ratio = (total time at the
faster precision) / (total time at the precision auto chose): 1.0 when auto
chose the faster one. Last line: one JSON object.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import warnings

import torch

from maskgit_inpaint import config, masks, runtime, sampling
from maskgit_inpaint.models.losses import LossConfig, PatchDiscriminator, TokenizerLoss
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.models.vqgan import VQGAN
from maskgit_inpaint.training.masking import random_token_mask
from maskgit_inpaint.training.transformer import mask_counts, masked_loss
from maskgit_inpaint.training.transformer import model_config as transformer_model_config
from maskgit_inpaint.training.vqgan import model_config

ROUNDS = 3
DECODE_IMAGES = 32
T = 8
SWEET_SPOTS = (1, 2, 4, 6, 8)
PRECISIONS = ("fp32", "bf16")


def tokenizer_step(params: config.Params, dev: torch.device):
    p, size = params.vqgan, params.data.image_size
    model = VQGAN(model_config(p, size)).to(dev).train()
    discriminator = PatchDiscriminator(3, p.disc_ch, p.disc_layers).to(dev)
    loss_fn = TokenizerLoss(LossConfig(0.0, max(p.disc_weight, 0.1), 0), None, discriminator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    x = torch.rand(p.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1

    def step(prec: runtime.Precision) -> None:
        optimizer.zero_grad(set_to_none=True)
        d_optimizer.zero_grad(set_to_none=True)
        with prec.autocast():
            rec, vq_loss, _, _ = model(x)
            loss, _ = loss_fn.generator(x, rec, vq_loss, 1, model.decoder.conv_out.weight)
        loss.backward()
        with prec.autocast():
            d_loss, _ = loss_fn.discriminator_loss(x, rec)
        d_loss.backward()
        optimizer.step()
        d_optimizer.step()
    return step


def transformer_config(params: config.Params) -> TransformerConfig:
    grid = model_config(params.vqgan, params.data.image_size).token_grid(params.data.image_size)
    return transformer_model_config(params.transformer, params.vqgan.n_embed, grid * grid)


def transformer_step(params: config.Params, dev: torch.device):
    p = params.transformer
    c = transformer_config(params)
    model = MaskedTokenTransformer(c).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=p.betas)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(c.codebook_size, (p.batch_size, c.n_tokens), generator=generator).to(dev)
    mask = random_token_mask(mask_counts(p.batch_size, c.n_tokens, p, generator), c.n_tokens, generator).to(dev)

    def step(prec: runtime.Precision) -> None:
        with prec.autocast():
            loss, _ = masked_loss(model, c.mask_id, x, mask, p.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def grid_decode(params: config.Params, dev: torch.device):
    size = params.data.image_size
    vqgan = VQGAN(model_config(params.vqgan, size)).to(dev).eval()
    c = transformer_config(params)
    transformer = MaskedTokenTransformer(c).to(dev).eval()
    grid = vqgan.config.token_grid(size)
    tokens = torch.randint(c.codebook_size, (DECODE_IMAGES, c.n_tokens), generator=torch.Generator().manual_seed(0)).to(dev)
    token_mask = masks.to_token_mask(masks.make("center", DECODE_IMAGES, size, 0), vqgan.config.downsample).to(dev)
    logits = runtime.in_cache_chunks(transformer, dev, c.activation_bytes)
    decode_pixels = runtime.in_cache_chunks(vqgan.decode_indices, dev, vqgan.config.decode_activation_bytes(size))

    @torch.no_grad()
    def step(prec: runtime.Precision) -> None:
        with prec.autocast():
            out = sampling.decode(logits, tokens, token_mask, "cosine", T, SWEET_SPOTS,
                                  generator=torch.Generator(dev).manual_seed(0), mask_id=c.mask_id)
            for ids in out.values():
                decode_pixels(ids.view(len(ids), grid, grid))
    return step


def main() -> None:
    params = config.load()
    dev = runtime.setup(0)
    hardware = runtime.detect(dev.type)
    auto = runtime.precision("auto", dev)
    with warnings.catch_warnings():  # forcing bf16 is the point here: no warning about it
        warnings.simplefilter("ignore", runtime.SlowPrecisionWarning)
        forced = {name: runtime.precision(name, dev) for name in PRECISIONS}
    workloads = {"tokenizer": tokenizer_step(params, dev), "transformer": transformer_step(params, dev),
                 "grid_decode": grid_decode(params, dev)}
    runs: dict[tuple[str, str], list[float]] = {(w, q): [] for w in workloads for q in PRECISIONS}
    for round_ in range(1 + ROUNDS):  # round 0 warms up
        for w, fn in workloads.items():
            for q in PRECISIONS:
                began = runtime.clock(dev)
                fn(forced[q])
                if round_:
                    runs[(w, q)].append(runtime.clock(dev) - began)
    seconds = {key: statistics.median(s) for key, s in runs.items()}
    total = {q: sum(seconds[(w, q)] for w in workloads) for q in PRECISIONS}
    chosen = auto.name if auto.name in PRECISIONS else "fp32"  # fp16 (older GPUs) is not timed here
    for w in workloads:
        print(f"{w:>12}: fp32 {seconds[(w, 'fp32')]:7.3f}s  bf16 {seconds[(w, 'bf16')]:7.3f}s  "
              f"(bf16 / fp32 = {seconds[(w, 'bf16')] / seconds[(w, 'fp32')]:.2f})")
    ratio = min(total.values()) / total[chosen]
    print(f"auto chose {auto.describe()}; ratio (faster / chosen) = {ratio:.2f}  [median of {ROUNDS} rounds after a warm-up]")
    print(json.dumps({
        "bench": "precision", "rounds": ROUNDS, "statistic": "median", "auto": auto.name, **dataclasses.asdict(hardware),
        **{f"seconds_{w}_{q}": round(s, 4) for (w, q), s in seconds.items()},
        **{f"seconds_total_{q}": round(s, 4) for q, s in total.items()},
        "ratio": round(ratio, 3),
    }))


if __name__ == "__main__":
    main()
