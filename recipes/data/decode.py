"""Raw sample fields (bytes) -> a training sample, or `BadSample` with the reason.

Everything that can be wrong with one sample raises `BadSample` (the loader counts it, logs it
once and moves on); everything that is wrong with the setup raises something else (it stops the
run). A decoded sample is

    {"key": str, "source": str | None, MODALITY: raw data (e.g. "image": PIL RGB image of image_size),
     "caption": str | None, "question": str | None, "answer": str | None,
     "digests": {MODALITY: sha256 of the item's field, bytes and decode settings}}

with a caption, or a question and an answer (or all three); text fields are never empty; at least
one item.

Items are decoded by the decoders registered by field (`register_decoder`): the image extensions
(IMAGE_FIELDS) give "image"; a field "NAME.npy" of a modality NAME the caller asks for gives a float
tensor (e.g. [N, C, *G] for a latent codec: N segments). A video or audio decoder is one more
registration. `digests` keys the token cache (`recipes.data.cache`): it changes with the bytes or
with any setting that changes the decoded item.

Images: fully decoded (`Image.load()`), so truncated files are caught here, not later in a
worker. Pillow's global `ImageFile.LOAD_TRUNCATED_IMAGES` must be False (some libraries flip it;
then truncated images would come out half grey): `decode_sample` refuses to run otherwise.
EXIF orientation is applied; alpha is composited onto white; 16-bit grayscale is scaled to 8
bits; the result is resized with bicubic filtering (shorter side to the target, then a
center crop, so the aspect ratio is kept; `resize="stretch"` resizes straight to the target).
Images already at the target size are returned pixel for pixel.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
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


@dataclass(frozen=True)
class DecodeSettings:
    """What a decoder may need besides the bytes (its `describe` puts the part that matters in the digest)."""

    image_size: tuple[int, int]  # also the frame size of videos
    resize: str = "center_crop"
    video_frames: int | None = None  # frames sampled evenly from a video (None: every frame)
    sample_rate: int | None = None  # audio resampled to this rate (None: the file's own)
    audio_seconds: float | None = None  # audio cut or zero-padded to this length (None: as long as the file)


@dataclass(frozen=True)
class Decoder:
    """Bytes of one field -> the raw data of one modality's item (raises `BadSample` on bad bytes)."""

    modality: str
    decode: Callable[[str, bytes, str, DecodeSettings], Any]  # (key, data, field, settings) -> item
    describe: Callable[[DecodeSettings], str]  # the settings that change the decoded item, for the digest


# field (a member extension, e.g. "png", "audio.npy") -> its decoder; the order of registration is the
# order of preference when a sample holds several fields of one modality
DECODERS: dict[str, Decoder] = {}


DecodeFn = Callable[[str, bytes, str, DecodeSettings], Any]


def register_decoder(modality: str, fields: Iterable[str],
                     describe: Callable[[DecodeSettings], str] = lambda settings: "") -> Callable[[DecodeFn], DecodeFn]:
    """Decorator: `decode(key, data, field, settings) -> item` decodes these fields into `modality`."""

    def deco(fn: DecodeFn) -> DecodeFn:
        for field in fields:
            known = DECODERS.get(field)
            if known is not None and known.decode is not fn:
                raise ValueError(f"field {field!r} already has a decoder (for {known.modality!r})")
            DECODERS[field] = Decoder(modality, fn, describe)
        return fn

    return deco


def registered_modalities() -> tuple[str, ...]:
    """The modalities some registered decoder produces, in registration order."""
    return tuple(dict.fromkeys(d.modality for d in DECODERS.values()))


def decoder_for(raw: Mapping, modality: str) -> tuple[str, Decoder] | None:
    """(field, decoder) of the first field of `raw` that decodes into `modality`: a registered field,
    else "MODALITY.npy" (a float array); None when the sample has none."""
    for field, decoder in DECODERS.items():
        if decoder.modality == modality and field in raw:
            return field, decoder
    if f"{modality}.npy" in raw:
        return f"{modality}.npy", Decoder(modality, decode_array, lambda settings: "")
    return None


def raw_digest(field: str, data, settings: str) -> str:
    """sha256 over an item's field name, decode settings and bytes: the token cache's key."""
    h = hashlib.sha256(f"{field}\n{settings}\n".encode())
    h.update(data.encode() if isinstance(data, str) else bytes(data))
    return h.hexdigest()


def sample_modality(sample: Mapping, modalities: Iterable[str]) -> str | None:
    """The first of `modalities` (e.g. those a model has codecs for) whose item the decoded sample holds."""
    return next((m for m in modalities if sample.get(m) is not None), None)


def decode_sample(raw: Mapping, image_size: int | tuple[int, int], resize: str = "center_crop",
                  modalities: Iterable[str] | None = None, video_frames: int | None = None,
                  sample_rate: int | None = None, audio_seconds: float | None = None) -> dict:
    """Decode one `Source.raw(i)` dict; raises `BadSample` for anything wrong with the sample.

    modalities: the items to decode (default: every modality with a registered decoder); the sample
    needs at least one of them. video_frames: frames sampled evenly from a video (None: all); sample_rate,
    audio_seconds: audio resampled to that rate, cut or padded to that length (None: as in the file)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some library or script): truncated "
                           "images would decode silently as partly grey; set it back to False")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    settings = DecodeSettings(as_size(image_size), resize, video_frames, sample_rate, audio_seconds)
    wanted = registered_modalities() if modalities is None else tuple(modalities)
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

    sample = {"key": key, "source": raw.get("__source__")}
    digests = {}
    for modality in wanted:
        found = decoder_for(raw, modality)
        if found is not None:
            field, decoder = found
            sample[modality] = decoder.decode(key, raw[field], field, settings)
            digests[modality] = raw_digest(field, raw[field], decoder.describe(settings))
    if not digests:
        raise BadSample(key, "missing " + (" or ".join(wanted) if wanted else "item"))
    return {**sample, "caption": caption, "question": question, "answer": answer, "digests": digests}


@register_decoder("image", IMAGE_FIELDS, describe=lambda s: f"{s.image_size[0]}x{s.image_size[1]}:{s.resize}")
def decode_image(key: str, data, field: str, settings: DecodeSettings) -> Image.Image:
    """An RGB PIL image of `settings.image_size` (see the module doc for what is done to it)."""
    H, W = settings.image_size
    return _fit(_decode_image(key, data, field), H, W, settings.resize)


VIDEO_FIELDS = ("mp4", "webm", "mkv", "mov", "avi")


@register_decoder("video", VIDEO_FIELDS,
                  describe=lambda s: f"{s.image_size[0]}x{s.image_size[1]}:{s.resize}:frames={s.video_frames}")
def decode_video(key: str, data, field: str, settings: DecodeSettings) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] of `settings.image_size`, read through decord (or PyAV, torchcodec); T =
    `settings.video_frames` sampled evenly, or every frame. A corrupt, truncated or too short file is a
    bad sample; no video reader installed stops the run."""
    from modalities import VideoReadError, read_video

    try:
        return read_video(bytes(data), settings.video_frames, size=settings.image_size, resize=settings.resize,
                          name=f"{key}.{field}")
    except VideoReadError as e:
        raise BadSample(key, str(e)) from None


AUDIO_FIELDS = ("wav", "flac", "ogg", "mp3")


@register_decoder("audio", AUDIO_FIELDS, describe=lambda s: f"rate={s.sample_rate}:seconds={s.audio_seconds}")
def decode_audio(key: str, data, field: str, settings: DecodeSettings) -> torch.Tensor:
    """Mono float32 samples [N] at `settings.sample_rate` (or the file's rate), cut or zero-padded to
    `settings.audio_seconds` when set, read through torchaudio or soundfile. A corrupt, truncated or empty
    file is a bad sample."""
    from modalities.audio_io import AudioReadError, read_audio

    try:
        return read_audio(bytes(data), settings.sample_rate, settings.audio_seconds, name=f"{key}.{field}")
    except AudioReadError as e:
        raise BadSample(key, str(e)) from None


def decode_array(key: str, data, field: str, settings: DecodeSettings) -> torch.Tensor:
    """A .npy float array (no pickles) -> float32 tensor, as stored (e.g. a latent [N, C, *G])."""
    try:
        array = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
        raise BadSample(key, f"undecodable array ({field}): {type(e).__name__}: {e}") from None
    if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2:
        raise BadSample(key, f"{field} holds a {array.dtype} array of shape {array.shape}, expected floats "
                             "[segments, ...]")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


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
        with warnings.catch_warnings():  # Pillow only warns up to 2x its pixel limit: a bomb all the same
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
