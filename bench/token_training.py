"""Transformer training fed from pre-extracted tokens vs encoding images through the VQGAN on the fly.

Per profile, on the same models and batches (random weights: speed does not depend
on them), the time per training image of
- tokens: one MVTM step (forward, backward, AdamW) on a batch read from a
  memory-mapped uint16 token array, as train_transformer does;
- on_the_fly: the VQGAN encode of the batch's images (no grad, under the precision params decide, as
  extract_tokens) followed by the same step. JPEG decoding is left out of both,
  which flatters on_the_fly.
Profiles: `embedded` (params.yaml's vqgan and transformer at data.image_size) and
`places365` (taming's f16-1024 tokenizer at 256 px, MaskGIT's 24 x 768 transformer
over 256 tokens; a few small batches on a CPU). Each figure is the min over
REPEATS rounds after a warm-up; the two paths take turns in every round.
ratio = places365 on_the_fly / tokens (saved again on every epoch);
embedded_ratio likewise. Last line: one JSON object.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from maskgit_inpaint import config, runtime
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.models.vqgan import VQGAN, VQGANConfig
from maskgit_inpaint.training.masking import random_token_mask
from maskgit_inpaint.training.transformer import mask_counts, masked_loss
from maskgit_inpaint.training.transformer import model_config as transformer_config
from maskgit_inpaint.training.vqgan import model_config

REPEATS = 3
F16_1024 = VQGANConfig(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                       z_channels=256, embed_dim=256, n_embed=1024)


def measure(name: str, vqgan: VQGAN, transformer: MaskedTokenTransformer, image_size: int, batch: int,
            p: config.TransformerParams, dev: torch.device) -> dict:
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4, betas=(0.9, 0.96))
    prec = runtime.precision(p.precision, dev)  # as train_transformer decides it
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1).to(dev)
    n_tokens = transformer.config.n_tokens
    with tempfile.TemporaryDirectory() as tmp:
        array = np.random.default_rng(0).integers(0, vqgan.config.n_embed, (batch * 8, n_tokens), dtype=np.uint16)
        np.save(Path(tmp) / "train.npy", array)
        store = np.load(Path(tmp) / "train.npy", mmap_mode="r")
        rng = np.random.default_rng(1)

        def train_step(ids: torch.Tensor) -> None:
            mask = random_token_mask(mask_counts(len(ids), n_tokens, p, generator), n_tokens, generator).to(dev)
            with prec.autocast():
                loss, _ = masked_loss(transformer, transformer.config.mask_id, ids, mask, p.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def from_tokens() -> None:
            index = np.sort(rng.choice(len(store), batch, replace=False))  # random rows, read in order as training does
            train_step(torch.from_numpy(store[index].astype(np.int64)).to(dev))

        def on_the_fly() -> None:
            with torch.no_grad(), prec.autocast():
                ids = vqgan.encode(images).flatten(1)  # (B, h*w)
            train_step(ids)

        paths = {"tokens": from_tokens, "on_the_fly": on_the_fly}
        times = {k: [] for k in paths}
        for round_ in range(REPEATS + 1):
            for key, fn in paths.items():
                began = runtime.clock(dev)
                fn()
                if round_:  # round 0 warms up
                    times[key].append(runtime.clock(dev) - began)
    per_image = {f"{k}_s_per_image": min(v) / batch for k, v in times.items()}
    result = {**per_image, "batch": batch, "ratio": per_image["on_the_fly_s_per_image"] / per_image["tokens_s_per_image"]}
    print(f"{name}: tokens {per_image['tokens_s_per_image'] * 1e3:.1f} ms/image, on the fly "
          f"{per_image['on_the_fly_s_per_image'] * 1e3:.1f} ms/image (batch {batch}) -> ratio {result['ratio']:.2f}")
    return result


def main() -> None:
    params = config.load()
    dev = runtime.setup(0)
    p = params.transformer
    size = params.data.image_size
    vqgan = VQGAN(model_config(params.vqgan, size)).to(dev).eval()
    grid = vqgan.config.token_grid(size)
    small = MaskedTokenTransformer(transformer_config(p, params.vqgan.n_embed, grid * grid)).to(dev).train()
    embedded = measure("embedded", vqgan, small, size, p.batch_size, p, dev)
    big_batch = 2 if dev.type == "cpu" else 32
    f16 = VQGAN(F16_1024).to(dev).eval()
    maskgit = MaskedTokenTransformer(TransformerConfig(codebook_size=1024, n_tokens=256, n_layer=24, n_head=16,
                                                       n_embd=768, mlp_ratio=4)).to(dev).train()
    places = measure("places365", f16, maskgit, 256, big_batch, p, dev)
    print(json.dumps({"embedded": embedded, "places365": places, "embedded_ratio": embedded["ratio"],
                      "ratio": places["ratio"], "device": str(dev),
                      **runtime.precision(p.precision, dev).facts()}))


if __name__ == "__main__":
    main()
