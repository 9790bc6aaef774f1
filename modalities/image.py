"""Images <-> HART hybrid tokens, on top of `hart_core.HARTTokenizer`.

Pixel conventions: the tokenizer works on [B, 3, H, W] floats in [-1, 1]; `decode` hands back
[B, 3, H, W] floats in [0, 1] (ready for `to_pil` or metrics). Note the asymmetry: feed decoded
images back through `to_pil` (or `* 2 - 1`) before encoding them again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hart_core.quantizer import HybridTokens, MultiScaleResidualQuantizer
from hart_core.tokenizer import HARTTokenizer

from .base import ModalityCodec, codec_subfolder, read_codec_config, register_codec, write_codec_config

# a list of PIL RGB images, uint8 [B, H, W, 3] (numpy or torch), or float [B, 3, H, W] in [-1, 1]
ImageBatch = Image.Image | Sequence[Image.Image] | np.ndarray | torch.Tensor

TOKENIZER_SUBFOLDER = "tokenizer"


@register_codec
class ImageCodec(ModalityCodec):
    codec_type = "hart_image"
    name = "image"

    def __init__(self, tokenizer: HARTTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @classmethod
    def from_hart_tokenizer(cls, tokenizer: HARTTokenizer) -> ImageCodec:
        return cls(tokenizer)

    @classmethod
    def from_official(cls, folder: str | os.PathLike) -> ImageCodec:
        """A released HART `tokenizer/` folder."""
        return cls(HARTTokenizer.from_official(folder)).eval()

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.tokenizer.quantize

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images this codec accepts and produces."""
        return self.tokenizer.image_size

    # ------------------------------------------------------------------ pixels in
    def preprocess(self, images: ImageBatch) -> torch.Tensor:
        """Any accepted image batch -> float [B, 3, H, W] in [-1, 1] on the codec's device/dtype.

        Sizes are checked, never silently resized: a resize changes what the tokens mean.
        """
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            images = self._pil_to_uint8(images)
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected PIL images, a uint8 array [B, H, W, 3] or a float tensor [B, 3, H, W], "
                            f"got {type(images).__name__}")
        H, W = self.image_size
        if images.dtype == torch.uint8:
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be channels-last [B, H, W, 3] RGB, got shape "
                                 f"{tuple(images.shape)}" + _channel_hint(images.shape, last=True))
            self._check_size(tuple(images.shape[1:3]), "uint8 images")
            # same arithmetic for every input form, so PIL / uint8 / float give identical tokens
            x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        elif images.is_floating_point():
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"float images must be channels-first [B, 3, H, W] in [-1, 1], got shape "
                                 f"{tuple(images.shape)}" + _channel_hint(images.shape, last=False))
            self._check_size(tuple(images.shape[2:]), "float images")
            lo, hi = images.min().item(), images.max().item()
            if lo < -1.001 or hi > 1.001:
                raise ValueError(f"float images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                                 "(uint8 pixels: pass the uint8 array itself)")
            x = images
        else:
            raise ValueError(f"images must be uint8 [B, H, W, 3] or float [B, 3, H, W], got dtype {images.dtype}")
        # contiguous: a permuted (channels-last) input would pick other conv kernels and change
        # the residual in the last bits, so equal pixels would not give equal tokens
        return x.to(device=self.device, dtype=self.codebook.dtype).contiguous()

    def _pil_to_uint8(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            raise ValueError("got an empty list of images")
        H, W = self.image_size
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{i}] is a {type(im).__name__}, expected a PIL image")
            if im.mode != "RGB":
                raise ValueError(f"images[{i}] has mode {im.mode!r}, expected an 'RGB' image; "
                                 "convert it first with image.convert('RGB')")
            if im.size != (W, H):
                raise ValueError(f"images[{i}] is {im.size[0]}x{im.size[1]} (WxH), this codec expects "
                                 f"{W}x{H}; resize or crop it first, e.g. image.resize(({W}, {H}))")
        return np.stack([np.asarray(im) for im in images])

    def _check_size(self, hw: tuple[int, ...], what: str) -> None:
        H, W = self.image_size
        if hw != (H, W):
            raise ValueError(f"{what} are {hw[1]}x{hw[0]} (WxH), this codec expects {W}x{H}; "
                             "resize or crop them first")

    @torch.no_grad()
    def encode(self, images: ImageBatch) -> HybridTokens:
        return self.tokenizer.encode(self.preprocess(images))

    # ------------------------------------------------------------------ pixels out
    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent [B, Cvae, h, w] -> images float [B, 3, H, W] in [0, 1]."""
        return self.tokenizer.decode_latent(f_hat).add(1).mul(0.5)

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        """Float [B, 3, H, W] in [0, 1] (as `decode` returns) -> PIL RGB images."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected float images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        # weights first, codec.json last: a folder with codec.json is a complete one
        self.tokenizer.save_pretrained(Path(folder) / TOKENIZER_SUBFOLDER)
        write_codec_config(folder, {"codec_type": self.codec_type, "name": self.name,
                                    "tokenizer": TOKENIZER_SUBFOLDER})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageCodec:
        config = read_codec_config(folder, cls.codec_type)
        tokenizer = HARTTokenizer.from_pretrained(codec_subfolder(folder, config, "tokenizer", TOKENIZER_SUBFOLDER))
        return cls(tokenizer).eval()


def _channel_hint(shape: torch.Size, last: bool) -> str:
    """The likely mistake behind a wrong image shape, as a suffix for the error message."""
    if len(shape) != 4:
        return ""
    if shape[1 if last else 3] == 3:  # the other layout
        return "; it looks " + ("channels-first: use .permute(0, 2, 3, 1)" if last
                                else "channels-last: use .permute(0, 3, 1, 2)")
    channels = shape[3 if last else 1]
    return f"; {channels} channels given: convert to RGB first" if channels in (1, 4) else ""


# image side -> (patch_nums, ch_mult); ch_mult (1, 2, 1) downsamples 4x
_DEBUG_LADDERS = {16: ((1, 2, 3, 4), (1, 2, 1)), 32: ((1, 2, 4, 8), (1, 2, 1))}


def debug_image_codec(seed: int = 0, image_size: int = 16) -> ImageCodec:
    """A tiny random image codec (V=96, Cvae=8) for tests and demos; its tokens mean nothing."""
    from hart_core.debug import debug_configs

    if image_size not in _DEBUG_LADDERS:
        raise ValueError(f"debug image codecs exist for image_size in {sorted(_DEBUG_LADDERS)}, got {image_size}")
    patch_nums, ch_mult = _DEBUG_LADDERS[image_size]
    cfg, _ = debug_configs(patch_nums=patch_nums)
    cfg.ch_mult = ch_mult
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        return ImageCodec(HARTTokenizer(cfg)).eval()
