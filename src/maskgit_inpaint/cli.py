"""`maskgit-inpaint`: complete the hole of one of your own pictures, or print what the pipeline holds.

    maskgit-inpaint info
    maskgit-inpaint inpaint photo.jpg -o done.png --box 800,500,300,200
    maskgit-inpaint inpaint photo.jpg -o done.jpg --mask hole.png --save-steps steps/
    maskgit-inpaint inpaint photo.jpg -o done.png --kind thick --T 8 --sweet-spot 4 --seed 3

Any size and mode: the models see a window around the hole at their own resolution,
and the completion is written into the hole only, at full resolution (inpaint.py).
Settings not given on the command line are the grid's held-out pick for the hole's
mask kind (metrics/eval_summary.json), else params.yaml's `eval` section.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image

from maskgit_inpaint import config, inpaint, io, masks, schedules
from maskgit_inpaint.data.images import to_rgb
from maskgit_inpaint.models.checkpoint import CONFIG

# OUT's suffix -> PIL format and save options; no suffix is PNG. Every format but JPEG keeps each pixel exactly.
OUTPUT_FORMATS = {"": ("PNG", {}), ".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
                  ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}), ".webp": ("WEBP", {"lossless": True, "exact": True})}
NO_ALPHA = ("JPEG",)  # formats without an alpha channel: a transparent picture is flattened onto white
STRIP_HEIGHT = 256  # pixels of each picture of the --save-steps strip
STEP_PNG = {"compress_level": 1}  # 4x faster than PNG's default 6 for ~7% more bytes (3000 x 2000 photo: 0.6 s vs 2.4 s)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


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


def _output_format(out: Path) -> tuple[str, dict]:
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise inpaint.InpaintError(f"{out}: unknown output format {out.suffix!r}; name a .png, .jpg, .tif or .webp file")
    return OUTPUT_FORMATS[out.suffix.lower()]


def _check_writable(path: Path, *, directory: bool) -> None:
    """Fail before any work where `path` (a file to write, or a directory to write into) cannot be written."""
    if path.is_dir() != directory and path.exists():
        raise inpaint.InpaintError(f"{path}: is a {'file' if directory else 'directory'}; give a {'directory' if directory else 'file'} path")
    existing = next(p for p in (path if directory else path.parent, *path.parents) if p.exists())
    if not existing.is_dir():
        raise inpaint.InpaintError(f"{path}: cannot be created, {existing} is a file; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise inpaint.InpaintError(f"{path}: cannot write in {existing} (permission denied); choose a writable path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(image: Image.Image, path: Path, fmt: str, options: dict) -> None:
    """`image` written to `path` in one rename: a failed or killed write leaves no half a picture behind."""
    try:
        with io.atomic_file(path) as tmp:
            image.save(tmp, format=fmt, **options)
            tmp.chmod(0o666 & ~_umask())  # the temp file is 0600 (mkstemp); the picture is an ordinary file of the user's
    except OSError as err:
        raise inpaint.InpaintError(f"{path}: cannot write it ({err.strerror or err}); choose a writable path") from err


def _storable(image: Image.Image, fmt: str) -> tuple[Image.Image, tuple[str, ...]]:
    """`image` in a mode `fmt` stores, and a note where that dropped its alpha channel."""
    if fmt not in NO_ALPHA or image.mode not in ("RGBA", "LA"):
        return image, ()
    flat = to_rgb(image)
    return (flat.convert("L") if image.mode == "LA" else flat), (f"{fmt} has no alpha channel: the transparency was flattened onto white",)


def _package(args: argparse.Namespace) -> inpaint.Package:
    """The models and their settings: a logged MLflow model (which needs no workspace), or the workspace's (or --models') pair."""
    if args.mlflow_model:
        from maskgit_inpaint import mlflow_model  # imports MLflow (seconds): only for this flag
        return mlflow_model.load_package(args.mlflow_model)
    if args.models and not Path(args.models).is_dir():
        raise inpaint.InpaintError(f"{args.models}: no such directory; --models takes a directory holding vqgan/ and transformer/")
    return inpaint.workspace_package(config.load(args.params), Path(args.models) if args.models else None)


def _given_hole(args: argparse.Namespace, image: Image.Image) -> tuple[np.ndarray | None, str]:
    """The hole of --box or --mask (None for --kind, which needs the models' resolution) and its words for the summary."""
    if args.box:
        return inpaint.hole_from_box(args.box, image.size), f"box {args.box}"
    if not args.mask:
        return None, f"{args.kind} mask"
    mask = inpaint.read_image(Path(args.mask))
    if mask.size != image.size:
        print(f"note: the mask {args.mask} is {mask.width}x{mask.height} and the image {image.width}x{image.height}: "
              "the mask was resized to the image")
    return inpaint.hole_from_mask(mask, image.size, args.mask), f"mask {args.mask}"


def _save_steps(completion: inpaint.Completion, hole: np.ndarray, directory: Path) -> None:
    """Each step's picture as DIR/step_01.png ..., and DIR/steps.png: the window of the input (hole grey) and of every step."""
    if not completion.steps:
        print(f"note: no steps saved in {directory}: nothing was hidden, so nothing was decoded")
        return
    width = max(2, len(str(max(completion.steps))))
    for k, picture in completion.steps.items():
        _write(picture, directory / f"step_{k:0{width}d}.png", "PNG", STEP_PNG)
    x, y, w, h = completion.window
    shown = np.array(to_rgb(completion.image))
    shown[hole] = 128
    frames = [Image.fromarray(shown), *(to_rgb(picture) for _, picture in sorted(completion.steps.items()))]
    size = (max(1, round(w * STRIP_HEIGHT / h)), STRIP_HEIGHT)
    strip = Image.new("RGB", (size[0] * len(frames), STRIP_HEIGHT))
    for i, frame in enumerate(frames):
        strip.paste(frame.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC), (i * size[0], 0))
    _write(strip, directory / "steps.png", "PNG", {})
    print(f"steps: {len(completion.steps)} pictures in {directory}/step_*.png, the window of each side by side in {directory / 'steps.png'}")


def _inpaint(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    out = Path(args.out)
    fmt, options = _output_format(out)
    _check_writable(out, directory=False)
    if args.save_steps:
        _check_writable(Path(args.save_steps), directory=True)
    image = inpaint.read_image(Path(args.image))
    hole, hole_words = _given_hole(args, image)
    kind = inpaint.BOX_KIND if args.box else inpaint.DRAWN_KIND if args.mask else args.kind
    package = _package(args)
    settings = package.settings(kind).with_overrides(schedule=args.schedule, T=args.T, sweet_spot=args.sweet_spot, seed=args.seed)
    print(f"settings: {settings.describe()}, for {kind} holes: {settings.chosen_by}")
    print(package.training_note)
    inpainter = package.inpainter()
    if hole is None:
        hole = inpaint.hole_of_kind(args.kind, image.size, resolution=inpainter.resolution, f=inpainter.vqgan.config.downsample,
                                    seed=package.eval.seed, token_ratio=package.eval.random_token_ratio)
    completion = inpainter.complete(image, hole, settings, keep_steps=bool(args.save_steps))
    result, stored_notes = _storable(completion.image, fmt)
    for note in (*completion.notes, *stored_notes):
        print(f"note: {note}")
    icc = image.info.get("icc_profile") if result.mode == image.mode else None  # the colour space of unconverted pixels
    _write(result, out, fmt, {**options, **({"icc_profile": icc} if icc else {})})
    if args.save_steps:
        _save_steps(completion, hole, Path(args.save_steps))
    x, y, w, h = completion.window
    R = inpainter.resolution
    window = f"window {w}x{h} at ({x},{y}) seen at {R}x{R}" if w else "no window (nothing to fill)"
    print(f"inpaint: {args.image} {image.width}x{image.height} {image.mode}, {hole_words} hides {completion.hidden:.1%}, {window}, "
          f"{settings.schedule} T={settings.T} k={settings.sweet_spot} seed {settings.seed}, {inpainter.precision.describe()} "
          f"-> {out} ({fmt} {result.width}x{result.height} {result.mode}) in {time.perf_counter() - began:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(prog="maskgit-inpaint", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(config.DEFAULT_PARAMS), help="params file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the trained models' configs and the best grid cell")
    cmd = commands.add_parser("inpaint", help="complete the hole of one picture of any size and mode",
                              description="Complete the hole of IMAGE and write OUT, of IMAGE's size; known pixels are kept.")
    cmd.add_argument("image", metavar="IMAGE", help="the picture: any file PIL reads (PNG, JPEG, WebP, TIFF, ...), any size and mode")
    cmd.add_argument("-o", "--out", required=True,
                     help="the completed picture; its suffix names the format: .png (or none), .jpg (quality 95), .tif, .webp (lossless)")
    hole = cmd.add_mutually_exclusive_group()
    hole.add_argument("--mask", metavar="MASK.png",
                      help="a picture of the hole: light (>= 128) = fill, dark or transparent = keep; resized to IMAGE if its size differs")
    hole.add_argument("--box", metavar="x,y,w,h", help="a rectangle to fill, in pixels of IMAGE (x,y = its top-left corner)")
    hole.add_argument("--kind", choices=masks.KINDS, default="center",
                      help="an evaluation mask kind stretched over IMAGE (default, when no hole is given: %(default)s)")
    cmd.add_argument("--schedule", metavar="S", help=f"mask schedule, one of {', '.join(sorted(schedules.SCHEDULES))}")
    cmd.add_argument("--T", type=int, metavar="N", help="decoding steps of the schedule (>= 1)")
    cmd.add_argument("--sweet-spot", type=int, metavar="K", help="stop decoding at step k of T (k <= T); not set: the recommended k, even with --T")
    cmd.add_argument("--seed", type=int, metavar="N", help="seed of the sampler's noise and token draws")
    models = cmd.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="DIR", help="a directory holding vqgan/ and transformer/ (default: the workspace's, params paths)")
    models.add_argument("--mlflow-model", metavar="URI", help="a logged model: models:/maskgit-inpaint/latest or a local MLflow model dir")
    cmd.add_argument("--save-steps", metavar="DIR", help="also write the picture as it is after each decoding step: DIR/step_01.png ...")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            _info(config.load(args.params))
        else:
            _inpaint(args)
    except (config.ParamsError, inpaint.InpaintError, FileNotFoundError) as err:
        sys.exit(str(err))
