"""Decoding cost of a grid: one batched trajectory for all sweet spots vs the lab's way.

The lab decoded one image at a time and re-ran decoding for every sweet spot. Here
both ways run side by side on the same transformer (default embedded size, random
weights: speed does not depend on them), the same images and the same grid.
Last line: one JSON object with the figures and `ratio` = lab seconds / ours.
"""
from __future__ import annotations

import json

import torch

from maskgit_inpaint import config, masks, runtime, sampling
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig

IMAGES = 32
T = 8
SWEET_SPOTS = (2, 4, 6, 8)


def main() -> None:
    params = config.load()
    p = params.transformer
    dev = runtime.setup(0)
    grid = params.data.image_size // 2 ** (len(params.vqgan.ch_mult) - 1)
    model = MaskedTokenTransformer(TransformerConfig(
        codebook_size=params.vqgan.n_embed, n_tokens=grid * grid, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
    )).to(dev).eval()
    tokens = torch.randint(0, params.vqgan.n_embed, (IMAGES, grid * grid), device=dev)
    token_mask = masks.to_token_mask(masks.make("center", IMAGES, params.data.image_size, 0), params.data.image_size // grid).to(dev)

    def ours() -> None:
        with runtime.autocast(dev, True):
            sampling.decode(model, tokens, token_mask, "cosine", T, SWEET_SPOTS, generator=torch.Generator(dev).manual_seed(0))

    def lab() -> None:
        with runtime.autocast(dev, True):
            for k in SWEET_SPOTS:
                for i in range(IMAGES):
                    sampling.decode(model, tokens[i:i + 1], token_mask[i:i + 1], "cosine", k, [k],
                                    generator=torch.Generator(dev).manual_seed(0))

    timings = {}
    for name, fn in (("ours", ours), ("lab", lab)):
        fn()  # warm-up
        began = runtime.clock(dev)
        fn()
        timings[name] = runtime.clock(dev) - began
        print(f"{name}: {timings[name]:.3f}s for {IMAGES} images x sweet spots {SWEET_SPOTS} of T={T}")
    print(json.dumps({
        "bench": "decode", "device": str(dev), "images": IMAGES, "T": T, "sweet_spots": list(SWEET_SPOTS),
        "seconds_ours": round(timings["ours"], 4), "seconds_lab": round(timings["lab"], 4),
        "ratio": round(timings["lab"] / timings["ours"], 2),
    }))


if __name__ == "__main__":
    main()
