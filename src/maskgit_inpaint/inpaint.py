"""Complete one picture of any size and mode with the trained pair (the CLI and the MLflow model both call this).

The models work at one resolution R (the tokenizer's). A photograph is far larger,
so the model sees a window around the hole: the hole's bounding box grown to about
twice its longer side (at least R pixels), clipped to the image. That window is
resized to R x R, its tokens under the hole are decoded (sampling.decode, the
grid's sampler), and the decoded window is resized back and written into the hole
only: every known pixel of the original stays byte for byte, at full resolution.
A hole that hides nothing returns the input; one that hides everything is
completed from nothing.
"""
from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from maskgit_inpaint import config, masks, runtime, sampling, schedules
from maskgit_inpaint.data.images import to_rgb
from maskgit_inpaint.models.transformer import MaskedTokenTransformer
from maskgit_inpaint.models.vqgan import VQGAN

# Metrics whose held-out pick sets the recommended cell, best first: perceptual, then realism, then fidelity.
PICK_ORDER = ("lpips_masked", "swd_masked", "psnr_masked")
# The mask kind whose grid row stands for a user's hole: a box is the center box's kind, a drawn mask a free-form one.
BOX_KIND, DRAWN_KIND = "center", "thick"
KEPT_MODES = ("RGB", "RGBA", "L", "LA")  # written back as they came; other modes become RGB(A) first
CONTEXT = 2.0  # window side / the hole's longer side: the hole then covers about a quarter of it, like the center mask


class InpaintError(ValueError):
    """A user's input that cannot be completed; the message says which file or value and what to do."""


@dataclass(frozen=True)
class Settings:
    """The sampler settings of one decode: a grid cell's axes plus the grid's fixed settings."""

    schedule: str  # mask schedule gamma (schedules.SCHEDULES)
    T: int  # decoding steps of the schedule
    sweet_spot: int  # stop at step k of T (k <= T)
    token_temperature: float  # softmax temperature of each token's draw
    temperature: float  # choice temperature of the Gumbel confidence noise
    start_step: int  # schedule step decoding starts at
    token_dilation: int  # latent cells the token mask grows by
    seed: int  # of the Gumbel noise and the token draws
    chosen_by: str  # where these came from, in words, for the user

    def __post_init__(self) -> None:
        # Checked here, so that a caller's value fails with one line before any model runs, not inside sampling.decode.
        if self.schedule not in schedules.SCHEDULES:
            raise InpaintError(f"schedule {self.schedule!r} is unknown; choose one of {', '.join(sorted(schedules.SCHEDULES))}")
        if self.T < 1:
            raise InpaintError(f"T={self.T}: decoding needs at least 1 step")
        if not self.start_step < self.sweet_spot <= self.T:
            raise InpaintError(f"sweet_spot {self.sweet_spot} must lie in {self.start_step + 1}..{self.T} "
                               f"(decoding stops at step sweet_spot of T={self.T}; it starts after step {self.start_step})")
        if self.token_temperature <= 0:
            raise InpaintError(f"token_temperature {self.token_temperature} must be > 0")

    def with_overrides(self, *, schedule: str | None = None, T: int | None = None, sweet_spot: int | None = None,
                       seed: int | None = None) -> "Settings":
        """These settings with each field given (not None) replaced and checked again; chosen_by says which were set."""
        changes = {name: value for name, value in (("schedule", schedule), ("T", T), ("sweet_spot", sweet_spot), ("seed", seed))
                   if value is not None}
        if not changes:
            return self
        said = ", ".join(f"{name}={value}" for name, value in changes.items())
        return dataclasses.replace(self, **changes, chosen_by=f"{self.chosen_by}; overridden: {said}")

    def describe(self) -> str:
        return (f"{self.schedule} T={self.T} k={self.sweet_spot} (token temperature {self.token_temperature:g}, "
                f"choice temperature {self.temperature:g}, seed {self.seed})")


@dataclass(frozen=True)
class Completion:
    """A completed picture and what was done to get it."""

    image: Image.Image  # the input's size; its mode unless that was not one of KEPT_MODES
    window: tuple[int, int, int, int]  # (x, y, width, height) of the region the model saw, in input pixels
    hidden: float  # share of the input's pixels that were hidden
    notes: tuple[str, ...]  # what a user should know (an empty or full mask, a converted mode)
    steps: dict[int, Image.Image] = field(default_factory=dict)  # k -> the picture had decoding stopped at step k


def settings_from_params(p: config.EvalParams, *, chosen_by: str = "params.yaml (eval)") -> Settings:
    """The first schedule, the largest T, its last step and the first token temperature of the grid's params."""
    T = max(p.T)
    return Settings(schedule=p.schedules[0], T=T, sweet_spot=T, token_temperature=p.token_temperature[0], temperature=p.temperature,
                    start_step=p.start_step, token_dilation=p.token_dilation, seed=p.seed, chosen_by=chosen_by)


def recommended(summary: dict | None, kind: str, p: config.EvalParams) -> Settings:
    """The grid's held-out pick for mask kind `kind` (eval_summary.json's contents), else the params' settings; `chosen_by` says which."""
    picks = ((summary or {}).get("masks", {}).get(kind) or {}).get("picks", {})
    metric = next((m for m in PICK_ORDER if m in picks), None)
    if metric is None:
        reason = "no grid has run" if summary is None else f"the grid has no picks for mask kind {kind}"
        return settings_from_params(p, chosen_by=f"params.yaml (eval): {reason}")
    cell = picks[metric]["cell"]
    return Settings(schedule=cell["schedule"], T=int(cell["T"]), sweet_spot=int(cell["sweet_spot"]),
                    token_temperature=float(cell["token_temperature"]), temperature=p.temperature, start_step=p.start_step,
                    token_dilation=p.token_dilation, seed=p.seed,
                    chosen_by=f"the grid's held-out pick for {kind} holes by {metric}: {picks[metric]['name']}")


def read_summary(path: Path) -> dict | None:
    """metrics/eval_summary.json, or None when no grid has run."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InpaintError(f"{path}: not valid JSON ({err}); rerun the grid (`dvc repro eval_grid`) or remove the file") from err


def open_image(data: bytes, name: str) -> Image.Image:
    """Encoded image bytes -> an upright (EXIF orientation), fully decoded PIL image; InpaintError names `name` otherwise."""
    if not data:
        raise InpaintError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InpaintError(f"{name}: cannot decode as an image ({err}); give a PNG, JPEG, WebP, BMP, TIFF or GIF file") from err
    except Image.DecompressionBombError as err:  # not an OSError: PIL's guard against huge images
        raise InpaintError(f"{name}: {err}") from err


def read_image(path: Path) -> Image.Image:
    """`open_image` of a file, with one clear error when it is missing or unreadable."""
    try:
        return open_image(Path(path).read_bytes(), str(path))
    except FileNotFoundError as err:
        raise InpaintError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise InpaintError(f"{path}: is a directory, not an image file") from err
    except OSError as err:  # permissions, a path through a file, an I/O error
        raise InpaintError(f"{path}: cannot read it ({err.strerror or err})") from err


def hole_from_mask(mask: Image.Image, size: tuple[int, int], name: str) -> np.ndarray:
    """(H, W) bool hole of a mask picture (light, >= 128 = fill; dark or transparent = keep), resized to `size` = (W, H) if it differs."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = np.asarray(mask.convert("RGBA"))
        values = np.where(rgba[..., 3] > 0, rgba[..., :3].max(axis=2), 0).astype(np.uint8)  # transparent = keep
    else:
        values = np.asarray(to_rgb(mask).convert("L"))
    if values.max() == values.min() and values.max() not in (0, 255):
        raise InpaintError(f"{name}: the mask is one flat gray ({values.max()}); paint the hole white (255) on black (0)")
    hole = values >= 128
    if hole.shape[::-1] == tuple(size):
        return hole
    painted = Image.fromarray(hole.astype(np.uint8) * 255)
    if size[0] >= hole.shape[1] and size[1] >= hole.shape[0]:  # enlarged: smooth edges, not NEAREST's staircase
        return np.asarray(painted.resize(size, Image.BILINEAR)) >= 128
    return np.asarray(painted.resize(size, Image.BOX)) > 0  # shrunk: a pixel partly hidden is filled, so thin strokes survive


def hole_from_box(box: str | Iterable[int], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool hole of a box "x,y,w,h" in pixels of an image of `size` = (W, H); InpaintError if it leaves the image."""
    try:
        x, y, w, h = (int(v) for v in (box.split(",") if isinstance(box, str) else box))
    except ValueError as err:
        raise InpaintError(f"box {box!r}: give four integers x,y,w,h (pixels; x,y = top-left corner)") from err
    W, H = size
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise InpaintError(f"box {x},{y},{w},{h} does not lie inside the {W}x{H} image: need x,y >= 0, w,h > 0, "
                           f"x + w <= {W}, y + h <= {H}")
    hole = np.zeros((H, W), dtype=bool)
    hole[y:y + h, x:x + w] = True
    return hole


def hole_of_kind(kind: str, size: tuple[int, int], *, resolution: int, f: int, seed: int, token_ratio: float) -> np.ndarray:
    """(H, W) bool hole of an evaluation mask kind, drawn at the model's resolution and stretched over the whole image."""
    square = masks.make(kind, 1, resolution, seed, f=f, token_ratio=token_ratio)[0, 0].numpy()  # (R, R) bool
    return np.asarray(Image.fromarray(square.astype(np.uint8) * 255).resize(size, Image.NEAREST)) >= 128


def window_around(hole: np.ndarray, resolution: int) -> tuple[int, int, int, int]:
    """(x, y, w, h): the hole's bounding box grown to CONTEXT times its longer side (at least `resolution`), inside the image."""
    H, W = hole.shape
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(round(CONTEXT * max(x1 - x0, y1 - y0)), resolution)
    w, h = min(side, W), min(side, H)
    x = int(np.clip((x0 + x1 - w) // 2, 0, W - w))  # centred on the hole, shifted to stay inside
    y = int(np.clip((y0 + y1 - h) // 2, 0, H - h))
    return x, y, w, h


def _base(image: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """The picture completion writes into: the input itself in KEPT_MODES, else its RGB(A) conversion (said in a note)."""
    if image.mode in KEPT_MODES:
        return image, ()
    if image.mode == "P" and "transparency" in image.info or image.mode == "PA":
        converted = image.convert("RGBA")
    elif image.mode in ("1",):
        converted = image.convert("L")
    elif image.mode.startswith("I") or image.mode == "F":
        converted = to_rgb(image).convert("L")
    else:
        converted = image.convert("RGB")
    return converted, (f"the input's mode {image.mode} was written as {converted.mode}",)


def _fill(base: np.ndarray, mode: str, hole: np.ndarray, window: tuple[int, int, int, int], decoded: Image.Image) -> Image.Image:
    """`base` (the input's pixels) with its hole replaced by `decoded` (the model's window, R x R) resized back to the window."""
    x, y, w, h = window
    patch = np.asarray(decoded.resize((w, h), Image.BICUBIC))  # (h, w, 3) uint8
    if mode.startswith("L"):
        patch = np.asarray(Image.fromarray(patch).convert("L"))[..., None]  # (h, w, 1) the luma PIL's own conversion gives
    out = base.copy().reshape(*base.shape[:2], -1)  # (H, W, C): L has no channel axis
    region, inside = out[y:y + h, x:x + w], hole[y:y + h, x:x + w]
    colour = patch.shape[2]
    region[inside, :colour] = patch[inside]
    if out.shape[2] > colour:  # an alpha channel: the completed pixels are opaque
        region[inside, colour:] = 255
    return Image.fromarray(out.squeeze(2) if out.shape[2] == 1 else out, mode)


class Inpainter:
    """The trained tokenizer + transformer on one device, at one precision."""

    def __init__(self, vqgan: VQGAN, transformer: MaskedTokenTransformer, *, precision: runtime.Precision):
        self.vqgan, self.transformer, self.precision = vqgan, transformer, precision

    @classmethod
    def load(cls, vqgan_dir: Path | str, transformer_dir: Path | str, *, precision: str = "auto") -> "Inpainter":
        """Both model directories (checkpoint.save_model's layout) on the best device here."""
        dev = runtime.device()
        return cls(VQGAN.load(vqgan_dir, dev), MaskedTokenTransformer.load(transformer_dir, dev), precision=runtime.precision(precision, dev))

    @property
    def resolution(self) -> int:
        return self.vqgan.config.resolution

    def complete(self, image: Image.Image, hole: np.ndarray, settings: Settings, *, keep_steps: bool = False) -> Completion:
        """Fill `hole` ((H, W) bool, True = fill) of `image`; known pixels are returned unchanged at full resolution."""
        base, notes = _base(image)
        hole = np.asarray(hole, dtype=bool)  # a 0/1 array would index rows, not pixels
        if hole.shape != base.size[::-1]:
            raise InpaintError(f"the hole is {hole.shape[1]}x{hole.shape[0]} but the image {base.width}x{base.height}")
        hidden = float(hole.mean())
        if hidden == 0:
            return Completion(base.copy(), (0, 0, 0, 0), 0.0, (*notes, "the mask hides no pixel: the input is returned unchanged"))
        if hidden == 1:
            notes += ("the mask hides every pixel: the picture is completed from nothing (no known pixel to follow)",)
        window = window_around(hole, self.resolution)
        ids = self._decode(to_rgb(base), hole, window, settings, keep_steps=keep_steps)
        pixels = np.asarray(base)
        filled = {k: _fill(pixels, base.mode, hole, window, self._pixels(step)) for k, step in ids.items()}
        return Completion(filled[settings.sweet_spot], window, hidden, notes, filled if keep_steps else {})

    def _decode(self, rgb: Image.Image, hole: np.ndarray, window: tuple[int, int, int, int], settings: Settings, *,
                keep_steps: bool) -> dict[int, torch.Tensor]:
        """Token ids (1, h*w) of the window after step k, for k = the sweet spot (and every step when `keep_steps`)."""
        x, y, w, h = window
        R, dev = self.resolution, self.precision.device
        crop = rgb.crop((x, y, x + w, y + h)).resize((R, R), Image.BICUBIC)
        pixels = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float().to(dev) / 127.5 - 1  # (1, 3, R, R) in [-1, 1]
        # A pixel of the hole hides its whole resized neighbourhood: area-average, then anything hidden counts.
        hidden = torch.from_numpy(hole[y:y + h, x:x + w].astype(np.float32))[None, None]  # (1, 1, h, w)
        pixel_mask = F.interpolate(hidden, size=(R, R), mode="area").to(dev) > 0  # (1, 1, R, R)
        token_mask = masks.dilate_token_mask(masks.to_token_mask(pixel_mask, self.vqgan.config.downsample), settings.token_dilation)
        ks = range(settings.start_step + 1, settings.T + 1) if keep_steps else [settings.sweet_spot]
        with torch.inference_mode(), self.precision.autocast():
            tokens = self.vqgan.encode(pixels).flatten(1)  # (1, h*w)
            return sampling.decode(self.transformer, tokens, token_mask, schedule=settings.schedule, T=settings.T, sweet_spots=ks,
                                   temperature=settings.temperature, token_temperature=settings.token_temperature,
                                   start_step=settings.start_step, generator=torch.Generator(dev).manual_seed(settings.seed))

    def _pixels(self, ids: torch.Tensor) -> Image.Image:
        """(1, h*w) token ids of the window -> its R x R RGB picture."""
        side = self.resolution // self.vqgan.config.downsample
        # One image needs none of evaluation.decode_pixels' chunking, and importing evaluation costs ~3 s (torchmetrics, pandas).
        with torch.inference_mode(), self.precision.autocast():
            decoded = self.vqgan.decode_indices(ids.view(1, side, side))[0]  # (3, R, R) in [-1, 1]
        return Image.fromarray(((decoded + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())


@dataclass(frozen=True)
class Package:
    """The trained pair and what a user's decode needs besides it: the grid's settings, its picks, what it was trained on."""

    vqgan_dir: Path
    transformer_dir: Path
    eval: config.EvalParams  # the grid's fixed settings (and its defaults where no grid ran)
    summary: dict | None  # metrics/eval_summary.json of the grid over this pair; None: no grid has run
    training_note: str  # training_note(), said with every completion

    def inpainter(self) -> Inpainter:
        return Inpainter.load(self.vqgan_dir, self.transformer_dir, precision=self.eval.precision)

    def settings(self, kind: str) -> Settings:
        """The recommended settings for holes like mask kind `kind` (recommended())."""
        return recommended(self.summary, kind, self.eval)


def workspace_package(params: config.Params, models_dir: Path | None = None) -> Package:
    """The pair this workspace trained (or the one in `models_dir`/vqgan + /transformer), with this workspace's grid summary."""
    vqgan_dir, transformer_dir = ((models_dir / "vqgan", models_dir / "transformer") if models_dir
                                  else (params.paths.vqgan, params.paths.transformer))
    return Package(vqgan_dir, transformer_dir, params.eval, read_summary(params.paths.metrics / "eval_summary.json"),
                   training_note(profile=params.profile, source=params.data.source))


def training_note(*, profile: str, source: str) -> str:
    """What the models were trained on, said plainly; the embedded sample's models know nothing of real photographs."""
    if source == "embedded":
        return (f"note: these models were trained on the embedded sample (profile {profile}: small procedural scenes, not photographs); "
                "real photos are out of their distribution, so expect plausible colours, not real content. "
                "Train on your own folder of images: set data.source in params.yaml and run `make run` (README: Training on your own photos)")
    return f"models trained on {source} (profile {profile})"
