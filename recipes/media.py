"""The files the command line reads and writes, by modality. Files are read as training reads them
(`recipes.data.decode`: EXIF orientation, alpha onto white, 16-bit greys, aspect kept by a center crop;
videos through decord), and written atomically where a partial file could be mistaken for a result."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from modalities.files import atomic_write  # noqa: F401  (the one atomic writer; commands import it from here)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def read_images(paths: Sequence[str | Path], size: tuple[int, int]) -> list:
    """PIL RGB images of `size` (H, W), decoded as the training data path decodes them."""
    from .data.decode import BadSample, DecodeSettings, decode_image

    images = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        try:
            images.append(decode_image(str(p), p.read_bytes(), p.suffix.lstrip(".").lower() or "png",
                                       DecodeSettings(tuple(size))))
        except BadSample as e:
            raise ValueError(f"cannot read image {p}: {e.reason}") from None
    return images


def read_prompts(prompts: Sequence[str] | None, prompts_file: str | Path | None) -> list[str]:
    """The --prompt values, then the lines of --prompts-file (blank lines skipped). A prompt without any
    printable character (spaces, NULs) is refused: the model would draw from nothing."""
    out = list(prompts or [])
    if prompts_file:
        path = Path(prompts_file)
        if path.is_dir():
            raise ValueError(f"--prompts-file {path} is a folder, not a text file")
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--prompts-file {path} is not UTF-8 text") from None
        out += [line.strip() for line in text.splitlines() if line.strip()]
    for p in out:
        if not any(c.isprintable() and not c.isspace() for c in p):
            raise ValueError(f"empty prompt {p!r}: it holds no printable text")
    return out


def read_clip(path: str | Path, size: tuple[int, int], frames: int | None = None, first: bool = False
              ) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] of a video file (or one frame of an image file): `frames` sampled evenly,
    or with `first` the first `frames` ones."""
    from modalities import read_video

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return torch.from_numpy(np.stack([np.asarray(im) for im in read_images([path], size)]))
    return read_video(path, frames, stride=1 if first and frames else None, size=size)


def read_sound(path: str | Path, codec) -> torch.Tensor:
    """Mono float samples [N] of an audio file at the codec's sample rate (as training decodes audio)."""
    from modalities import read_audio

    return read_audio(path, codec.sample_rate)


def modality_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else "image"


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT for one output, OUT_000.EXT, OUT_001.EXT, ... for several."""
    return [out] if count == 1 else [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(count)]


def check_writable(out: Path) -> None:
    """Fail before any compute when OUT's folder cannot be created or written (read-only, no space left)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to {out.parent}: {e.strerror or e}") from None


def write_prompts(out: Path, prompts: list[str]) -> None:
    if len(prompts) > 1:
        atomic_write(out.with_name(f"{out.stem}_prompts.txt"), lambda p: p.write_text("\n".join(prompts) + "\n"))


def save_images(images: torch.Tensor, paths: list[Path]) -> list[Path]:
    """Images [B, 3, H, W] in [0, 1] as PNGs at these paths, each written atomically."""
    from modalities import ImageCodec

    for img, path in zip(ImageCodec.to_pil(images), paths, strict=True):
        atomic_write(path, img.save)
    return paths


def write_image_items(items: torch.Tensor, paths: list[Path], gif: bool = False, codec=None) -> list[Path]:
    """Image items [B, N, 3, H, W] at their paths; an item of several segments is PATH_sJJ.png each."""
    if items.shape[1] == 1:
        return save_images(items[:, 0], paths)
    return [p for j in range(items.shape[1])
            for p in save_images(items[:, j], [q.with_name(f"{q.stem}_s{j:02d}{q.suffix}") for q in paths])]


def write_video_items(items: torch.Tensor, paths: list[Path], gif: bool = False, fps: float = 8.0,
                      codec=None) -> list[Path]:
    """Clips [B, T, 3, H, W] in [0, 1] at their paths (.mp4, H.264, or .gif); with `gif` an mp4 also gets a
    GIF beside it (for pages and chats that show GIFs inline). write_video is atomic itself."""
    from modalities import write_video

    for path in paths:
        if path.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"--out {path}: a video is written as .mp4 or .gif")
    for clip, path in zip(items, paths, strict=True):
        write_video(path, clip, fps=fps)  # atomic, and a failed write is one line (ValueError)
        if gif and path.suffix.lower() == ".mp4":
            write_video(path.with_suffix(".gif"), clip, fps=fps)
    return paths


def write_audio_items(items: torch.Tensor, paths: list[Path], gif: bool = False, codec=None) -> list[Path]:
    """Audio items [B, S, chunk] (S chunks each) as .wav/.flac/.ogg files at the codec's sample rate, atomically."""
    from modalities import save_audio

    if codec is None or not hasattr(codec, "sample_rate"):
        raise ValueError("writing audio needs the audio codec (for its sample rate)")
    for wave, path in zip(codec.join(items), paths, strict=True):
        save_audio(path, wave, codec.sample_rate)
    return paths


# modality -> writer(items [b, N, ...] as the codec decodes them, their paths, gif=, codec=) -> written paths
WRITERS: dict[str, Callable[..., list[Path]]] = {"image": write_image_items, "video": write_video_items,
                                                 "audio": write_audio_items}
DEFAULT_OUT = {"image": "image.png", "video": "video.mp4", "audio": "audio.wav"}


def given_frames(codec, path: str | Path, count: int | None, segments: int):
    """The first segments of an item from a file, as the tokens of one item (a row per segment): the first
    `count` frames of a video file, or an image file as the first frame (image-to-video); the first `count`
    whole chunks of an audio file (None: all of them)."""
    from modalities import AudioCodec, VideoCodec

    if isinstance(codec, AudioCodec):
        tokens = codec.encode(codec.whole_chunks(read_sound(path, codec), count))
        if tokens.batch_size >= segments:
            raise ValueError(f"{tokens.batch_size} chunks given and --segments {segments}: nothing left to write")
        return tokens
    if not isinstance(codec, VideoCodec):
        raise ValueError(f"given segments continue video or audio; this codec is a {type(codec).__name__}")
    frames = read_clip(path, codec.frame_size, count, first=True)
    if len(frames) >= segments:
        raise ValueError(f"{len(frames)} frames given and --segments {segments}: nothing left to write")
    return codec.encode_items([frames])[0]
