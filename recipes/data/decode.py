"""Raw sample fields (bytes) -> a training sample, or `BadSample` with the reason.

Everything that can be wrong with one sample raises `BadSample` (the loader counts it, logs it
once and moves on); everything that is wrong with the setup raises something else (it stops the
run). A decoded sample is

    {"key": str, "source": str | None, "image": PIL RGB image of image_size,
     "caption": str | None, "question": str | None, "answer": str | None}

with a caption, or a question and an answer (or all three); text fields are never empty.

Images: fully decoded (`Image.load()`), so truncated files are caught here, not later in a
worker. Pillow's global `ImageFile.LOAD_TRUNCATED_IMAGES` must be False (some libraries flip it;
then truncated images would come out half grey): `decode_sample` refuses to run otherwise.
EXIF orientation is applied; alpha is composited onto white; 16-bit grayscale is scaled to 8
bits; the result is resized with bicubic filtering (shorter side to the target, then a
center crop, so the aspect ratio is kept; `resize="stretch"` resizes straight to the target).
Images already at the target size are returned pixel for pixel.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_FIELDS = ("image", "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
RESIZE_MODES = ("center_crop", "stretch")


class BadSample(Exception):
    """One sample that cannot be used; `key` names it, `reason` says why."""

    def __init__(self, key: str, reason: str):
        super().__init__(key, reason)
        self.key, self.reason = key, reason

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int (square) or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size


def decode_sample(raw: Mapping, image_size: int | tuple[int, int], resize: str = "center_crop") -> dict:
    """Decode one `Source.raw(i)` dict; raises `BadSample` for anything wrong with the sample."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some library or script): truncated "
                           "images would decode silently as partly grey; set it back to False")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    H, W = as_size(image_size)
    key = str(raw.get("__key__", "?"))
    if raw.get("__error__"):
        raise BadSample(key, str(raw["__error__"]))

    meta = {}
    if "json" in raw:
        text = _utf8(key, raw["json"], "json")
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadSample(key, f"invalid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise BadSample(key, f"JSON is a {type(meta).__name__}, expected an object")

    caption = _utf8(key, raw["txt"], "caption (.txt)") if "txt" in raw else None
    if caption is None:
        caption = _text_field(key, meta, "caption")
    elif not caption.strip():
        raise BadSample(key, "empty caption (.txt)")
    question, answer = _text_field(key, meta, "question"), _text_field(key, meta, "answer")
    if (question is None) != (answer is None):
        raise BadSample(key, "question without answer" if answer is None else "answer without question")
    if caption is None and question is None:
        raise BadSample(key, "missing caption (no .txt, no 'caption' in the JSON, no question/answer)")

    field = next((f for f in IMAGE_FIELDS if f in raw), None)
    if field is None:
        raise BadSample(key, "missing image")
    image = _decode_image(key, raw[field], field)
    return {"key": key, "source": raw.get("__source__"), "image": _fit(image, H, W, resize),
            "caption": caption, "question": question, "answer": answer}


def _utf8(key: str, data, what: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadSample(key, f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from None


def _text_field(key: str, meta: dict, name: str) -> str | None:
    value = meta.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadSample(key, f"JSON field {name!r} is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadSample(key, f"empty {name}")
    return value


def _decode_image(key: str, data, field: str) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise BadSample(key, f"empty image ({field})")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes everything: raises on truncated or corrupt data
        image = _to_rgb(_exif_transpose(image))
    except BadSample:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad files
        raise BadSample(key, f"undecodable image ({field}): {type(e).__name__}: {e}") from None
    return image


def _exif_transpose(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block is no reason to lose the picture
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grayscale: keep the top 8 bits
        a = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        if image.mode.startswith("I;16") or a.max() > 255:
            a = a >> 8
        image = Image.fromarray(a.astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(image: Image.Image, H: int, W: int, resize: str) -> Image.Image:
    w, h = image.size
    if (w, h) == (W, H):
        return image
    if resize == "stretch" or w * H == h * W:
        return image.resize((W, H), Image.Resampling.BICUBIC)
    scale = max(W / w, H / h)  # shorter side (relative to the target) to the target
    rw, rh = max(W, round(w * scale)), max(H, round(h * scale))
    image = image.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - W) // 2, (rh - H) // 2
    return image.crop((left, top, left + W, top + H))
