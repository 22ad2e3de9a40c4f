"""One input image -> the RGB size x size bytes a shard stores, or the reason it cannot be used."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ORIENTATION = 0x0112  # EXIF tag: how the camera was held


class RejectedImage(ValueError):
    """An input image that cannot be used; the message is the reason."""


def fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and center-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16/32-bit gray scaled to 8 bits, the rest by PIL's conversion."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit PNGs, 32-bit TIFFs: plain conversion would clip
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        if path.is_symlink():
            raise RejectedImage(f"broken link to {path.readlink()}") from err
        raise RejectedImage("file listed but missing") from err
    except OSError as err:  # unreadable (permissions, a directory named like an image, I/O error): one image, not the run
        raise RejectedImage(f"cannot read: {err.strerror or err}") from err


def prepare_image(raw: bytes, size: int, min_side: int = 1, jpeg_quality: int | None = None) -> tuple[bytes, str]:
    """Encoded image -> (encoded bytes, extension) of an RGB size x size image.

    A JPEG already upright, RGB and at the right size passes through byte for byte
    (no re-encoding loss; it is still decoded in full, so a broken one is caught);
    anything else is turned upright (EXIF orientation), converted to RGB (`to_rgb`),
    fitted to size x size and stored as JPEG at `jpeg_quality`, or lossless PNG when None.
    Images whose shorter side is below `min_side` are rejected rather than blown up.
    """
    if not raw:
        raise RejectedImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if min(img.size) < min_side:
                raise RejectedImage(f"too small: {img.width}x{img.height}, shorter side under data.min_side ({min_side})")
            upright = img.getexif().get(ORIENTATION, 1) == 1
            if img.format == "JPEG" and img.mode == "RGB" and img.size == (size, size) and upright:
                return raw, "jpg"
            img = to_rgb(ImageOps.exif_transpose(img))
    except RejectedImage:
        raise
    except UnidentifiedImageError as err:
        raise RejectedImage("cannot decode: not an image format PIL reads") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RejectedImage(f"cannot decode: {err}") from err
    buffer = io.BytesIO()
    if jpeg_quality is None:
        fit(img, size).save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    fit(img, size).save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue(), "jpg"
