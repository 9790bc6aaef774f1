"""Bytes in and out of the server: generated images as base64 PNGs, clips as GIF/mp4 bytes, and uploads
read as the command line reads image files (`recipes.media.read_images`, i.e. as training decodes them),
after a look at the header that refuses decompression bombs before anything is decoded."""

from __future__ import annotations

import base64
import io
import tempfile
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..media import read_images
from .settings import ServeError


def png_bytes(image: Image.Image) -> bytes:
    """A PIL image (as the batcher quantises them, the CLI's way) as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def clip_bytes(clip: torch.Tensor, fmt: str, fps: float = 4.0) -> bytes:
    """A clip [T, 3, H, W] in [0, 1] as GIF or H.264 mp4 bytes (written by modalities' writer)."""
    from modalities import write_video

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip.{fmt}"
        write_video(path, clip, fps=fps)
        return path.read_bytes()


def wav_bytes(wave: torch.Tensor, sample_rate: int) -> bytes:
    """Mono samples [N] as 16-bit PCM WAV bytes (written by modalities' writer)."""
    from modalities import save_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audio.wav"
        save_audio(path, wave, sample_rate)
        return path.read_bytes()


def read_upload(data: bytes, size: tuple[int, int], max_pixels: int, name: str = "upload"):
    """An uploaded image file as a PIL RGB image of `size` (H, W); ServeError (4xx) when it is empty, not
    an image, or larger than `max_pixels` (known from the header, so a bomb is never decompressed)."""
    if not data:
        raise ServeError(400, f"{name} is empty", "empty_upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as im:
                w, h, fmt = *im.size, (im.format or "png").lower()
    except Image.DecompressionBombError:
        raise ServeError(413, f"{name} has too many pixels", "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ServeError(400, f"{name} is not an image file ({type(e).__name__})", "invalid_image") from None
    if w * h > max_pixels:
        raise ServeError(413, f"{name} is {w}x{h} = {w * h} pixels; at most {max_pixels} are accepted",
                         "image_too_large")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload.{fmt}"
        path.write_bytes(data)
        try:
            return read_images([path], size)[0]
        except ValueError as e:  # a truncated or corrupt body behind a valid header
            raise ServeError(400, str(e).replace(str(path), name), "invalid_image") from None
