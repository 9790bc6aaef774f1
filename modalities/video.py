"""Videos <-> hybrid tokens, one segment per frame, through an image codec.

A clip of T frames becomes T segments: every frame goes through the image tokenizer (all frames of a
batch in one call), so a frame's tokens are exactly its image tokens, and text-to-video, video
captioning and frame continuation reuse the image machinery (scale ladder, residual, decoder). The
unified model writes the frames causally, scales inside a frame as for an image.

    codec = VideoCodec(image_codec)
    tokens = codec.encode(frames)            # uint8 [T, H, W, 3] (one clip) -> HybridTokens, T rows
    clips = codec.encode_items([a, b])       # a list of clips -> one HybridTokens per clip
    frames = codec.decode(tokens)            # float [T, 3, H, W] in [0, 1]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hart_core.quantizer import HybridTokens, MultiScaleResidualQuantizer

from .base import (
    ModalityCodec,
    codec_subfolder,
    load_codec,
    read_codec_config,
    register_codec,
    write_codec_config,
)
from .image import ImageCodec

IMAGE_SUBFOLDER = "image"

# one clip: uint8 [T, H, W, 3] (numpy or torch) or float [T, 3, H, W] in [-1, 1]
Clip = torch.Tensor | np.ndarray


@register_codec
class VideoCodec(ModalityCodec):
    codec_type = "hart_video"
    name = "video"

    def __init__(self, image_codec: ImageCodec):
        super().__init__()
        if not isinstance(image_codec, ImageCodec):
            raise TypeError(f"a video codec wraps an ImageCodec, got {type(image_codec).__name__}")
        self.image = image_codec

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.image.quantizer

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the frames this codec accepts and produces."""
        return self.image.image_size

    def _clip(self, clip: Clip) -> torch.Tensor:
        if isinstance(clip, np.ndarray):
            clip = torch.from_numpy(np.ascontiguousarray(clip))
        if not isinstance(clip, torch.Tensor) or clip.dim() != 4:
            got = f"shape {tuple(clip.shape)}" if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise ValueError(f"a clip is uint8 frames [T, H, W, 3] or float frames [T, 3, H, W] in [-1, 1], got {got}")
        if len(clip) == 0:
            raise ValueError("a clip needs at least one frame")
        return clip

    @torch.no_grad()
    def encode(self, clip: Clip) -> HybridTokens:
        """One clip -> HybridTokens with one row per frame (frames checked as the image codec checks images)."""
        return self.image.encode(self._clip(clip))

    @torch.no_grad()
    def encode_items(self, clips: Sequence[Clip]) -> list[HybridTokens]:
        """A list of clips (lengths may differ) -> one HybridTokens per clip; all frames in one batch."""
        if isinstance(clips, (torch.Tensor, np.ndarray)) and clips.ndim == 5:
            clips = list(clips)
        clips = [self._clip(c) for c in clips]
        if not clips:
            return []
        if len({(c.dtype, tuple(c.shape[1:])) for c in clips}) > 1:
            raise ValueError("clips of one batch must share dtype and frame shape")
        tokens = self.image.encode(torch.cat(clips))
        return tokens.split([len(c) for c in clips])

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latents [T, Cvae, h, w] -> frames float [T, 3, H, W] in [0, 1]."""
        return self.image.decode_latent(f_hat)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.image.save_pretrained(Path(folder) / IMAGE_SUBFOLDER)
        write_codec_config(folder, {"codec_type": self.codec_type, "name": self.name, "image": IMAGE_SUBFOLDER})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> VideoCodec:
        config = read_codec_config(folder, cls.codec_type)
        image = load_codec(codec_subfolder(folder, config, "image", IMAGE_SUBFOLDER))
        if not isinstance(image, ImageCodec):
            raise ValueError(f"{folder}: its image/ folder holds a {type(image).__name__}, not an image codec")
        return cls(image).eval()
