"""A codec whose raw data is the latent itself: float [N, C, *G] <-> HybridTokens, over any grids (1-D
or 2-D). It has no encoder or decoder network, only hart_core's multi-scale residual quantizer.

What it is for: tests and debug models of any modality name (a 1-D "audio-like" or "frame-like" toy
without training a codec), and models whose data is already a latent (features from another
encoder). `debug_latent_codec()` makes a small random one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hart_core.checkpoint import load_checked, read_weights, save_folder
from hart_core.quantizer import Grid, HybridTokens, MultiScaleResidualQuantizer

from .base import ModalityCodec, read_codec_config, register_codec, write_codec_config


@dataclass
class LatentCodecConfig:
    grids: tuple[Grid, ...]
    dim: int = 8
    vocab_size: int = 32
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    name: str = "latent"  # the modality this codec serves

    def __post_init__(self) -> None:
        self.grids = tuple(tuple(int(s) for s in g) for g in self.grids)


@register_codec
class LatentCodec(ModalityCodec):
    codec_type = "latent"
    name = "latent"

    def __init__(self, config: LatentCodecConfig):
        super().__init__()
        self.config = config
        self.name = config.name
        self.quantize = MultiScaleResidualQuantizer(config.vocab_size, config.dim, config.grids,
                                                    quant_resi=config.quant_resi,
                                                    share_quant_resi=config.share_quant_resi)

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.quantize

    @torch.no_grad()
    def encode(self, latents: torch.Tensor) -> HybridTokens:
        """float [N, C, *G] -> N rows of tokens (discrete codes + the continuous residual)."""
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"a latent codec encodes float tensors [N, {self.latent_dim}, *{self.grids[-1]}]")
        return self.quantize.encode(latents.to(self.device, self.codebook.dtype))

    @torch.no_grad()
    def encode_items(self, items: Sequence[torch.Tensor]) -> list[HybridTokens]:
        """Items [N_i, C, *G] (segments first) -> one HybridTokens per item, from one batched encode."""
        if isinstance(items, torch.Tensor):
            items = [items]
        if not items:
            return []
        return [t.clone() for t in self.encode(torch.cat(list(items))).split([len(x) for x in items])]

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        return f_hat

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        save_folder(folder / "quantizer", {"model_type": "latent_quantizer"}, self.state_dict())
        config = asdict(self.config)
        config["grids"] = [list(g) for g in self.config.grids]
        write_codec_config(folder, {"codec_type": self.codec_type, **config})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> LatentCodec:
        config = read_codec_config(folder, cls.codec_type)
        config.pop("codec_type")
        try:
            codec = cls(LatentCodecConfig(**config))
        except TypeError as e:
            raise ValueError(f"{folder}: bad latent codec config {json.dumps(config)} ({e})") from e
        load_checked(codec, read_weights(Path(folder) / "quantizer", prefer_ema=False), str(folder))
        return codec.eval()


def debug_latent_codec(grids: Sequence[Grid | int] = ((1,), (2,), (4,)), dim: int = 8, vocab_size: int = 32,
                       seed: int = 0, name: str = "latent") -> LatentCodec:
    """A small random latent codec (1-D grids by default) for tests and demos."""
    grids = tuple((g,) if isinstance(g, int) else tuple(g) for g in grids)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        return LatentCodec(LatentCodecConfig(grids, dim, vocab_size, name=name)).eval()
