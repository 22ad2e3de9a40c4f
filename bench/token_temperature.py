"""Does a lower token temperature remove the blobs of rare codes from the completions? (`eval.token_temperature`)

On the trained models of `make run` (models/, data/): the grid's decode (center mask,
cosine, T = 8, the grid's seeds and holes) at each token temperature in TEMPERATURES.
Per image, the share of generated tokens in the hole that are rare codes (used less
than a quarter as often as a uniform codebook would in the train tokens: the sun and
window colours that show as saturated blobs) against the same share of the image's own
tokens, and the hole's PSNR. Every figure carries its 95% bootstrap interval over
images; the grid's `eval.token_temperature` axis gives SWD and the paired tests.
The first images at each temperature go to docs/token_temperature.png.
Last line: one JSON object; `ratio` = the rare share at the lowest temperature over
the share at 1.0 (MaskGIT's draw), both measured in this run.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from maskgit_inpaint import config, evaluation, figures, metrics, runtime, sampling, stats
from maskgit_inpaint.data import shards
from maskgit_inpaint.data import tokens as token_store

TEMPERATURES = (1.0, 0.8, 0.6, 0.4, 0.2)
MASK, SCHEDULE, T = "center", "cosine", 8
RARE = 0.25  # a code is rare below this share of the uniform frequency 1 / K
SHOWN = 8  # images in the picture


def _interval(values: np.ndarray, seed: int) -> list[float]:
    got = stats.mean_interval(values, level=0.95, resamples=1000, seed=seed)
    return [got.value, got.lo, got.hi]


def main() -> None:
    params = config.load(config.DEFAULT_PARAMS)
    spec = evaluation.spec_for(params.paths, params.eval)
    data = evaluation.load_data(spec)
    codebook = data.transformer.config.codebook_size
    usage = np.bincount(token_store.load(params.paths.tokens, "train").ravel().astype(np.int64), minlength=codebook)
    rare = torch.from_numpy(usage / usage.sum() < RARE / codebook).to(data.device)  # (K,) bool
    logits = runtime.in_cache_chunks(data.transformer, data.device, data.transformer.config.activation_bytes)
    truth, rows = [], {}
    strip = None
    for tau in TEMPERATURES:
        shares, psnr = [], []
        for batch in data.batches(MASK, batch_size=spec.batch_size):
            generator = torch.Generator(data.device).manual_seed(evaluation.sampling_seed(spec.seed, 0, batch.start))
            with data.precision.autocast():
                ids = sampling.decode(logits, batch.tokens, batch.token_mask, SCHEDULE, T, [T], temperature=spec.temperature,
                                      generator=generator, mask_id=data.transformer.config.mask_id, token_temperature=tau)[T]
            hole = batch.token_mask.float()  # (B, N)
            shares.append(((rare[ids] * hole).sum(1) / hole.sum(1)).cpu())
            if tau == TEMPERATURES[0]:
                truth.append(((rare[batch.tokens] * hole).sum(1) / hole.sum(1)).cpu())
            pred = evaluation.composite(batch.images, evaluation.decode_pixels(data.vqgan, ids, data.precision), batch.pixel_mask,
                                        feather=spec.feather)
            psnr.append(metrics.psnr(pred, batch.images, batch.pixel_mask).cpu())
            if batch.start == 0:
                strip = strip or evaluation.SampleStrip.of(batch, SHOWN)
                strip.steps[tau] = shards.as_uint8(pred[:SHOWN])
        rows[tau] = {"rare_share": _interval(torch.cat(shares).numpy(), spec.seed), "psnr_masked": _interval(torch.cat(psnr).numpy(), spec.seed)}
        r, p = rows[tau]["rare_share"], rows[tau]["psnr_masked"]
        print(f"token temperature {tau:.1f}: rare-code share in the hole {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]  "
              f"masked PSNR {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}] dB")
    columns = {"input": strip.masked_input, **{f"tau={tau}": strip.steps[tau] for tau in TEMPERATURES}, "original": strip.original}
    figures.save(figures.sample_strip(columns, f"{MASK} mask, {SCHEDULE} T={T}: the token draw's softmax temperature"),
                 "docs/token_temperature.png")
    own = _interval(torch.cat(truth).numpy(), spec.seed)
    print(f"the images' own tokens: rare-code share {own[0]:.3f} [{own[1]:.3f}, {own[2]:.3f}] ({int((usage / usage.sum() < RARE / codebook).sum())} "
          f"of {codebook} codes are rare)")
    prec = runtime.precision(params.eval.precision, runtime.device())
    print(json.dumps({"images": len(data.images), "mask": MASK, "schedule": SCHEDULE, "T": T, "rows": rows, "own_tokens": own,
                      "ratio": rows[TEMPERATURES[-1]]["rare_share"][0] / rows[1.0]["rare_share"][0], **prec.facts()}))


if __name__ == "__main__":
    main()
