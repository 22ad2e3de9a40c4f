"""Decoding cost of a grid: our batched single-trajectory path vs the lab's way.

Everything runs in one process on the same models (VQGAN and transformer built
from params.yaml's `vqgan` / `transformer` sections with random weights: speed does
not depend on them), the same IMAGES random images and the same grid (schedule
"cosine", T steps, SWEET_SPOTS). Each figure is the min over REPEATS timed runs
after one warm-up run, under torch.no_grad and the precision the grid runs in; the paths take turns
in every round, so load from other processes falls on all of them alike.

- ours: the grid path. Tokens are pre-encoded (the extract_tokens stage, not
  timed); all images in one batch decode ONE T-step trajectory that yields every
  sweet spot, and the VQGAN decodes pixels only at the sweet spots (batched). As
  in evaluation.py, on a CPU both models run the batch in cache-sized chunks
  (runtime.in_cache_chunks).
- lab: the lab's way, one image at a time: VQGAN-encode the image, then for every
  sweet spot k a fresh run of the T-step schedule stopped at step k, decoding
  pixels after every step (the lab looked at each one).
- trajectory_batched / trajectory_per_image: the same single T-step trajectory,
  transformer only (no encode, no pixels), for all images at once vs one by one.
- per_spot_batched: batched, transformer only, a separate run (stopped at k) per sweet spot.

ratio = lab / ours; batch_ratio = trajectory_per_image / trajectory_batched;
grid_ratio = per_spot_batched / trajectory_batched. Last line: one JSON object.
"""
from __future__ import annotations

import json

import torch

from maskgit_inpaint import config, masks, runtime, sampling
from maskgit_inpaint.models.transformer import MaskedTokenTransformer
from maskgit_inpaint.models.vqgan import VQGAN
from maskgit_inpaint.training.transformer import model_config as transformer_config
from maskgit_inpaint.training.vqgan import model_config

IMAGES = 32
SCHEDULE = "cosine"
T = 8
SWEET_SPOTS = (1, 2, 4, 6, 8)
REPEATS = 3


def main() -> None:
    params = config.load()
    dev = runtime.setup(0)
    prec = runtime.precision(params.eval.precision, dev)  # as the grid decides it
    size = params.data.image_size
    vqgan = VQGAN(model_config(params.vqgan, size)).to(dev).eval()
    grid = vqgan.config.token_grid(size)
    p = params.transformer
    transformer = MaskedTokenTransformer(transformer_config(p, params.vqgan.n_embed, grid * grid)).to(dev).eval()
    images = torch.rand(IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    token_mask = masks.to_token_mask(masks.make("center", IMAGES, size, 0), vqgan.config.downsample).to(dev)
    with torch.no_grad(), prec.autocast():
        tokens = vqgan.encode(images).flatten(1)  # (B, h*w): what extract_tokens stores; not timed

    logits = runtime.in_cache_chunks(transformer, dev, transformer.config.activation_bytes)
    decode_pixels = runtime.in_cache_chunks(vqgan.decode_indices, dev, vqgan.config.decode_activation_bytes(size))

    def run(tok: torch.Tensor, mask: torch.Tensor, steps: int, spots: tuple[int, ...] | range) -> dict[int, torch.Tensor]:
        return sampling.decode(logits, tok, mask, SCHEDULE, steps, spots,
                               generator=torch.Generator(dev).manual_seed(0), mask_id=transformer.config.mask_id)

    def pixels(ids: torch.Tensor) -> None:
        decode_pixels(ids.view(len(ids), grid, grid))

    def ours() -> None:
        for ids in run(tokens, token_mask, T, SWEET_SPOTS).values():
            pixels(ids)

    def lab() -> None:
        for i in range(IMAGES):
            tok = vqgan.encode(images[i:i + 1]).flatten(1)
            for k in SWEET_SPOTS:
                for ids in run(tok, token_mask[i:i + 1], T, range(1, k + 1)).values():
                    pixels(ids)

    def trajectory_batched() -> None:
        run(tokens, token_mask, T, SWEET_SPOTS)

    def trajectory_per_image() -> None:
        for i in range(IMAGES):
            run(tokens[i:i + 1], token_mask[i:i + 1], T, SWEET_SPOTS)

    def per_spot_batched() -> None:
        for k in SWEET_SPOTS:
            run(tokens, token_mask, T, (k,))

    paths = {  # name: (what it times, the timed function)
        "ours": ("batched, one trajectory, pixels at sweet spots only (tokens pre-encoded)", ours),
        "lab": ("per image: encode, per sweet spot a fresh run stopped at k, pixels every step", lab),
        "trajectory_batched": ("transformer only, one trajectory, all images batched", trajectory_batched),
        "trajectory_per_image": ("transformer only, one trajectory, one image at a time", trajectory_per_image),
        "per_spot_batched": ("transformer only, all images batched, one run per sweet spot", per_spot_batched),
    }
    runs: dict[str, list[float]] = {name: [] for name in paths}
    with torch.no_grad(), prec.autocast():
        for round_ in range(1 + REPEATS):  # round 0 warms up
            for name, (_, fn) in paths.items():
                began = runtime.clock(dev)
                fn()
                if round_:
                    runs[name].append(runtime.clock(dev) - began)
    seconds = {name: min(s) for name, s in runs.items()}
    for name, (what, _) in paths.items():
        print(f"{name:>20}: {seconds[name]:8.3f}s  {what}")
    ratios = {
        "ratio": seconds["lab"] / seconds["ours"],
        "batch_ratio": seconds["trajectory_per_image"] / seconds["trajectory_batched"],
        "grid_ratio": seconds["per_spot_batched"] / seconds["trajectory_batched"],
    }
    print(f"ratio (lab / ours) = {ratios['ratio']:.2f}, batch_ratio (per image / batched) = {ratios['batch_ratio']:.2f}, "
          f"grid_ratio (run per sweet spot / one trajectory) = {ratios['grid_ratio']:.2f}  "
          f"[{IMAGES} images, {SCHEDULE} T={T}, sweet spots {SWEET_SPOTS}, min of {REPEATS} after a warm-up, {dev}]")
    print(json.dumps({
        "bench": "decode", "device": str(dev), "images": IMAGES, "schedule": SCHEDULE, "T": T,
        "sweet_spots": list(SWEET_SPOTS), "repeats": REPEATS, "statistic": "min", **prec.facts(),
        **{f"seconds_{name}": round(s, 4) for name, s in seconds.items()},
        **{name: round(r, 2) for name, r in ratios.items()},
    }))


if __name__ == "__main__":
    main()
