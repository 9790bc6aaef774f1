"""Reading video files.

Reading goes through decord (the design card's choice) or, where decord cannot be installed (it has no
aarch64 or macOS-arm wheel, and its last release is from 2021), torchcodec (PyTorch's own decoder, exact
frame seeking; its wheels need the matching torch build) or PyAV (FFmpeg in a wheel for every platform);
animated GIFs through Pillow. All sit behind one interface:

    reader = open_video("clip.mp4")                   # backend="auto" | "decord" | "torchcodec"
    reader.num_frames, reader.fps, reader.size        # size = (H, W)
    frames = reader.frames([0, 4, 8])                 # uint8 [3, H, W, 3], exactly those frames
    frames = read_video("clip.mp4", num_frames=8, size=32)   # sampled, resized + center-cropped

Frames are sampled by count (evenly over the clip), by stride, or at a target fps. Anything wrong with a
file (missing, corrupt, truncated, no video stream, too short) raises `VideoReadError` with one line
that names the file and the reason.

Writing is `modalities.video_write.write_video`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("decord", "torchcodec", "pyav")  # in order of preference


class VideoReadError(ValueError):
    """A video that cannot be read; the message names the file and says why."""


class VideoReader:
    """A video opened for random access to its frames. Use `open_video`."""

    backend: str

    def __init__(self, source: str | os.PathLike | bytes, name: str):
        self.source = source if isinstance(source, bytes) else str(source)
        self.path = name  # what messages call it

    @property
    def num_frames(self) -> int:
        raise NotImplementedError

    @property
    def fps(self) -> float:
        raise NotImplementedError

    @property
    def size(self) -> tuple[int, int]:
        raise NotImplementedError

    def _frames(self, indices: list[int]) -> np.ndarray:
        raise NotImplementedError

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Exactly the frames at these indices, uint8 [N, H, W, 3]."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise VideoReadError(f"{self.path}: frame {bad[0]} requested, the video has {self.num_frames} frames")
        try:
            data = self._frames(indices)
        except VideoReadError:
            raise
        except Exception as e:  # a decoder's own error on a damaged stream: one line, with the file
            raise VideoReadError(f"{self.path}: cannot decode frames ({type(e).__name__}: {_first_line(e)})") from e
        return torch.from_numpy(np.ascontiguousarray(data))


class _DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, source, name):
        super().__init__(source, name)
        import io

        import decord

        src = io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source
        self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
        if len(self._vr) == 0:
            raise VideoReadError(f"{self.path}: no frames")

    @property
    def num_frames(self) -> int:
        return len(self._vr)

    @property
    def fps(self) -> float:
        return float(self._vr.get_avg_fps())

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self._vr[0].shape[:2])

    def _frames(self, indices):
        return self._vr.get_batch(indices).asnumpy()


class _TorchcodecReader(VideoReader):
    backend = "torchcodec"

    def __init__(self, source, name):
        super().__init__(source, name)
        from torchcodec.decoders import VideoDecoder

        self._dec = VideoDecoder(self.source, seek_mode="exact", dimension_order="NHWC")
        if self.num_frames == 0:
            raise VideoReadError(f"{self.path}: no frames")

    @property
    def num_frames(self) -> int:
        return int(self._dec.metadata.num_frames)

    @property
    def fps(self) -> float:
        return float(self._dec.metadata.average_fps)

    @property
    def size(self) -> tuple[int, int]:
        return int(self._dec.metadata.height), int(self._dec.metadata.width)

    def _frames(self, indices):
        return self._dec.get_frames_at(indices).data.numpy()


class _PyAVReader(VideoReader):
    """PyAV (FFmpeg's libraries in a wheel for every platform). Frames are decoded in order from the
    start up to the last one asked for, so every index is exact, whatever the container's seek index."""

    backend = "pyav"

    def __init__(self, source, name):
        super().__init__(source, name)
        import av

        self._av = av
        with self._open() as container:
            stream = container.streams.video[0]
            self._fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            self._size = (int(stream.codec_context.height), int(stream.codec_context.width))
            count = int(stream.frames or 0)
            if count == 0:  # no frame count in the container: count by decoding
                count = sum(1 for _ in container.decode(stream))
        self._count = count

    def _open(self):
        return self._av.open(io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source)

    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _frames(self, indices):
        wanted, last, got = set(indices), max(indices), {}
        with self._open() as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        missing = [i for i in indices if i not in got]
        if missing:
            raise VideoReadError(f"{self.path}: frame {missing[0]} could not be decoded (the stream ends early)")
        return np.stack([got[i] for i in indices])


class _GifReader(VideoReader):
    """Animated GIFs through Pillow (decord cannot measure their duration); every frame is kept."""

    backend = "pillow"

    def __init__(self, source, name):
        super().__init__(source, name)
        from PIL import Image, ImageSequence

        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            self._data = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
            durations = [f.info.get("duration", 0) for f in ImageSequence.Iterator(im)]
        self._fps = 1000.0 / float(np.mean(durations)) if durations and np.mean(durations) > 0 else 10.0

    @property
    def num_frames(self) -> int:
        return len(self._data)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self._data.shape[1:3])

    def _frames(self, indices):
        return self._data[indices]


_READERS = {"decord": _DecordReader, "torchcodec": _TorchcodecReader, "pyav": _PyAVReader}


def _is_gif(source: str | bytes) -> bool:
    if isinstance(source, bytes):
        return source[:4] == b"GIF8"
    with open(source, "rb") as f:
        return f.read(4) == b"GIF8"


def available_backends() -> list[str]:
    """The reading backends that import here, in order of preference."""
    out = []
    modules = {"decord": "decord", "torchcodec": "torchcodec.decoders", "pyav": "av"}
    for name in BACKENDS:
        try:
            __import__(modules[name])
            out.append(name)
        except Exception:  # not installed, or its native library does not load here
            pass
    return out


def open_video(source: str | os.PathLike | bytes, backend: str = "auto", name: str | None = None) -> VideoReader:
    """A file path, or the bytes of a file (e.g. a webdataset sample's mp4); `name` labels errors."""
    if backend != "auto" and backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r} (auto, {', '.join(BACKENDS)})")
    if isinstance(source, (bytes, bytearray)):
        source, name = bytes(source), name or "<video bytes>"
        if not source:
            raise VideoReadError(f"{name}: empty file")
    else:
        name = name or str(source)
        if not Path(source).is_file():
            raise VideoReadError(f"{name}: no such file")
    if backend == "auto" and _is_gif(source):
        try:
            return _GifReader(source, name)
        except Exception as e:  # Pillow's own error on a damaged file
            raise VideoReadError(f"{name}: not a readable GIF ({type(e).__name__}: {_first_line(e)})") from e
    names = available_backends() if backend == "auto" else [backend]
    if not names:
        raise RuntimeError("no video reader is installed: pip install decord (x86_64 Linux/Windows), av or torchcodec")
    try:
        return _READERS[names[0]](source, name)
    except VideoReadError:
        raise
    except ImportError as e:
        raise RuntimeError(f"the {names[0]} video backend is not installed ({e})") from e
    except Exception as e:  # the decoder could not open the container or its video stream
        raise VideoReadError(f"{name}: not a readable video ({type(e).__name__}: {_first_line(e)})") from e


def sample_indices(total: int, fps: float, num_frames: int | None = None, stride: int | None = None,
                   target_fps: float | None = None, start: int = 0) -> list[int]:
    """Frame indices of a clip: `num_frames` evenly over [start, total) (or, with stride / target_fps,
    that many consecutive picks at that step), or every stride-th / every frame at target_fps to the end."""
    if sum(x is not None for x in (stride, target_fps)) > 1:
        raise ValueError("give stride or target_fps, not both")
    if not 0 <= start < total:
        raise ValueError(f"start frame {start} is outside the video's {total} frames")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if stride is None and target_fps is None:
        if num_frames is None:
            return list(range(start, total))
        span = total - start
        if num_frames > span:
            raise ValueError(f"{num_frames} frames requested, the video has {span} from frame {start}")
        return [start + int(i * span / num_frames) for i in range(num_frames)]
    step = float(stride) if stride is not None else fps / float(target_fps)
    if step <= 0:
        raise ValueError("stride and target_fps must be positive")
    count = math.floor((total - 1 - start) / step) + 1
    if num_frames is not None:
        if num_frames > count:
            raise ValueError(f"{num_frames} frames at a step of {step:g} need {math.ceil((num_frames - 1) * step) + 1} "
                             f"frames, the video has {total - start} from frame {start}")
        count = num_frames
    return [start + round(i * step) for i in range(count)]


def fit_frames(frames: torch.Tensor, size: int | tuple[int, int], resize: str = "center_crop") -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, h, w, 3]: the shorter side scaled to fit then a center crop
    ("center_crop", keeps the aspect ratio) or a plain resize ("stretch"); bicubic, antialiased."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    H, W = frames.shape[1:3]
    if (H, W) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    if resize == "stretch":
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    elif resize == "center_crop":
        scale = max(h / H, w / W)
        sh, sw = max(h, round(H * scale)), max(w, round(W * scale))
        x = F.interpolate(x, size=(sh, sw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (sh - h) // 2, (sw - w) // 2
        x = x[:, :, top : top + h, left : left + w]
    else:
        raise ValueError(f"resize must be 'center_crop' or 'stretch', not {resize!r}")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def read_video(source: str | os.PathLike | bytes, num_frames: int | None = None, *, stride: int | None = None,
               fps: float | None = None, start: int = 0, size: int | tuple[int, int] | None = None,
               resize: str = "center_crop", backend: str = "auto", name: str | None = None) -> torch.Tensor:
    """Sampled frames of a video (a path or a file's bytes), uint8 [T, H, W, 3], resized to `size` if given."""
    reader = open_video(source, backend, name)
    try:
        indices = sample_indices(reader.num_frames, reader.fps, num_frames, stride, fps, start)
    except ValueError as e:
        raise VideoReadError(f"{reader.path}: {e}") from e
    frames = reader.frames(indices)
    return frames if size is None else fit_frames(frames, size, resize)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no message"
