"""`maskgit-inpaint`: complete one image with the trained models, or print what the pipeline holds.

    maskgit-inpaint info
    maskgit-inpaint inpaint photo.jpg completed.png [--schedule cosine] [--T 8]

Settings not given on the command line come from params.yaml (`eval` section).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskgit_inpaint import config, masks, metrics, runtime, sampling, schedules
from maskgit_inpaint.data import shards
from maskgit_inpaint.data.images import RejectedImage, prepare_image, read_file
from maskgit_inpaint.evaluation import composite, decode_pixels
from maskgit_inpaint.models.checkpoint import CONFIG
from maskgit_inpaint.models.transformer import MaskedTokenTransformer
from maskgit_inpaint.models.vqgan import VQGAN


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"  # eval_summary.json writes NaN as null


def _info(params: config.Params) -> None:
    paths = params.paths
    for name, directory in (("vqgan", paths.vqgan), ("transformer", paths.transformer)):
        path = directory / CONFIG
        print(f"{name}: {json.loads(path.read_text()) if path.is_file() else f'not trained yet ({path} missing)'}")
    grid = paths.metrics / "eval_summary.json"
    if not grid.is_file():
        print(f"grid: not run yet ({grid} missing)")
        return
    for mask, summary in json.loads(grid.read_text())["masks"].items():
        for metric, pick in summary["picks"].items():
            value, lo, hi = (_figure(pick["report"][k]) for k in ("value", "lo", "hi"))
            print(f"grid [{mask}]: best {metric}: {pick['name']}, {value} [{lo}, {hi}] on the report half, tied with {pick['tied_count']}")


def _inpaint(params: config.Params, args: argparse.Namespace) -> None:
    p = params.eval
    schedule = args.schedule or p.schedules[0]
    T = args.T or max(p.T)
    dev = runtime.setup(p.seed)
    prec = runtime.precision(p.precision, dev)
    vqgan = VQGAN.load(params.paths.vqgan, dev)
    transformer = MaskedTokenTransformer.load(params.paths.transformer, dev)
    size = vqgan.config.resolution
    try:
        data, _ = prepare_image(read_file(Path(args.image)), size)
    except RejectedImage as err:
        sys.exit(f"{args.image}: {err}")
    image = torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1)[None].float() / 127.5 - 1
    image = image.to(dev)  # (1, 3, H, W) in [-1, 1]
    f = vqgan.config.downsample
    pixel_mask = masks.make(args.mask, 1, size, p.seed, f=f, token_ratio=p.random_token_ratio).to(dev)
    token_mask = masks.to_token_mask(pixel_mask, f)
    with prec.autocast():
        tokens = vqgan.encode(image).flatten(1)  # (1, h*w)
        ids = sampling.decode(transformer, tokens, token_mask, schedule=schedule, T=T, sweet_spots=[T], temperature=p.temperature,
                              generator=torch.Generator(dev).manual_seed(p.seed))[T]
    completed = composite(image, decode_pixels(vqgan, ids, prec), pixel_mask, feather=p.feather)
    Image.fromarray(shards.as_uint8(completed)[0]).save(args.out)
    psnr = metrics.psnr(completed, image, pixel_mask).item()
    print(f"inpaint: {args.image} ({size}x{size}, {args.mask} mask, {schedule} T={T}) -> {args.out}; "
          f"PSNR in the hole vs the input {psnr:.2f} dB ({prec.describe()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="maskgit-inpaint", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(config.DEFAULT_PARAMS), help="params file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the trained models' configs and the best grid cell")
    inpaint = commands.add_parser("inpaint", help="complete the masked part of one image")
    inpaint.add_argument("image", help="any image file PIL reads; fitted (shorter side, center crop) to the tokenizer's size")
    inpaint.add_argument("out", help="where to write the completed image (PNG)")
    inpaint.add_argument("--mask", choices=masks.KINDS, default=masks.KINDS[0])
    inpaint.add_argument("--schedule", choices=sorted(schedules.SCHEDULES), help="default: the first of eval.schedules")
    inpaint.add_argument("--T", type=int, help="decoding steps; default: the largest of eval.T")
    args = parser.parse_args(argv)
    try:
        params = config.load(args.params)
    except config.ParamsError as err:
        sys.exit(str(err))
    try:
        if args.command == "info":
            _info(params)
        else:
            _inpaint(params, args)
    except FileNotFoundError as err:
        sys.exit(str(err))
