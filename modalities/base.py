"""The one interface every non-text modality implements, and the registry that loads codecs.

A codec turns raw data (pixels, frames, waveforms) into `HybridTokens` and back. Everything the
backbone needs between those two ends (teacher-forcing inputs, the next-scale input during
generation, latent <-> token layouts) is the same multi-scale residual quantizer arithmetic for
every modality, so it lives here once and is delegated to `self.quantizer`. A new modality only
writes raw <-> latent and registers itself; the backbone never sees raw data.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn as nn

from hart_core.quantizer import Grid, HybridTokens, MultiScaleResidualQuantizer

CODEC_CONFIG_NAME = "codec.json"

# codec_type -> class; filled by @register_codec when a codec module is imported
CODEC_REGISTRY: dict[str, type[ModalityCodec]] = {}


class ModalityCodec(nn.Module, ABC):
    """raw <-> HybridTokens for one modality, plus the latent arithmetic of its quantizer.

    Subclasses set `codec_type` (registry key, stored in codec.json) and `name` (the modality:
    "image", "video", "audio"), and implement `quantizer`, `encode`, `decode_latent`,
    `save_pretrained` and `from_pretrained`. Latents are [B, Cvae, *G] with G = grids[-1];
    token-major tensors are [B, n, Cvae], row-major over the grid.
    """

    codec_type: ClassVar[str]
    name: ClassVar[str]

    # ------------------------------------------------------------------ what a codec implements
    @property
    @abstractmethod
    def quantizer(self) -> MultiScaleResidualQuantizer:
        """The multi-scale residual quantizer all latent arithmetic is delegated to."""

    @abstractmethod
    def encode(self, batch: Any) -> HybridTokens:
        """Raw data -> tokens (per-scale indices + continuous residual)."""

    def encode_items(self, batch: Any) -> list[HybridTokens]:
        """A batch of items -> one HybridTokens per item, a row per segment. By default every row of
        `encode` is an item of one segment (an image); multi-segment codecs (video, audio) override it."""
        if isinstance(batch, (list, tuple)) and not batch:
            return []
        return self.encode(batch).rows()

    @abstractmethod
    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent [B, Cvae, *G] -> raw data."""

    @abstractmethod
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `folder/codec.json` ({"codec_type": ..., ...}) and whatever weights the codec needs."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ModalityCodec:
        """Inverse of `save_pretrained`."""

    # ------------------------------------------------------------------ shape of the token ladder
    @property
    def grids(self) -> tuple[Grid, ...]:
        return self.quantizer.grids

    @property
    def ndim(self) -> int:
        return self.quantizer.ndim

    @property
    def latent_dim(self) -> int:
        return self.quantizer.dim

    @property
    def codebook_size(self) -> int:
        return self.quantizer.vocab_size

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def tokens_per_scale(self) -> tuple[int, ...]:
        return tuple(math.prod(g) for g in self.grids)

    @property
    def codebook(self) -> torch.Tensor:
        """[V, Cvae], the quantizer's embedding weight (shared with the backbone's heads)."""
        return self.quantizer.embedding.weight

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    # ------------------------------------------------------------------ tokens <-> latents <-> raw
    def check_tokens(self, tokens: HybridTokens) -> None:
        # The quantizer would happily decode another ladder of the same rank; for a codec that
        # means tokens from a different codec, so refuse them instead of returning a wrong size.
        if tokens.grids != self.grids:
            raise ValueError(f"tokens have grids {tokens.grids}, this {self.name} codec uses {self.grids}")

    def fhat(self, tokens: HybridTokens, with_residual: bool = True) -> torch.Tensor:
        """Latent [B, Cvae, *G] of the tokens (HART inference: no phi on the last scale)."""
        self.check_tokens(tokens)
        return self.quantizer.decode_fhat(tokens, with_residual)

    def decode(self, tokens: HybridTokens, with_residual: bool = True) -> Any:
        """Tokens -> raw data; the residual is added only when with_residual and present."""
        return self.decode_latent(self.fhat(tokens, with_residual))

    # ------------------------------------------------------------------ what the backbone needs
    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inputs of scales 1..K-1 for training: [B, sum_{k>=1} n_k, Cvae], the area-downsampled
        cumulative latent after scales < k (only indices[0..K-2] are read)."""
        return self.quantizer.teacher_forcing_input(indices, self.grids)

    def next_scale_input(self, si: int, f_hat: torch.Tensor, codes: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One generation step: add scale si's codes [B, Cvae, *grid_si] to f_hat.

        Returns (new f_hat, input tokens of scale si+1 [B, n_{si+1}, Cvae]); at the last scale
        both are the final latent. At the last scale pass codes + residual to get the full
        latent. f_hat is not modified in place.
        """
        expected = (f_hat.shape[0], self.latent_dim, *self.grids[si])
        if tuple(codes.shape) != expected:
            raise ValueError(f"codes of scale {si} have shape {tuple(codes.shape)}, expected {list(expected)} "
                             "(use codes_to_grid to reshape [B, n, Cvae] codes)")
        return self.quantizer.next_scale_input(si, f_hat, codes, self.grids)

    def empty_latent(self, batch_size: int, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
        """The f_hat generation starts from: zeros [B, Cvae, *G] (codebook dtype by default, so the
        phi convs in next_scale_input see matching dtypes)."""
        return torch.zeros(batch_size, self.latent_dim, *self.grids[-1],
                           device=self.device if device is None else device,
                           dtype=self.codebook.dtype if dtype is None else dtype)

    def latent_to_tokens(self, f_hat: torch.Tensor) -> torch.Tensor:
        """[B, Cvae, *G] -> [B, prod(G), Cvae], row-major over the grid (the residual's layout)."""
        expected = (self.latent_dim, *self.grids[-1])
        if tuple(f_hat.shape[1:]) != expected:
            raise ValueError(f"latent has shape {tuple(f_hat.shape)}, expected [B, {', '.join(map(str, expected))}]")
        return f_hat.flatten(2).transpose(1, 2)

    def codes_to_grid(self, codes: torch.Tensor, si: int) -> torch.Tensor:
        """Token-major codes [B, n_si, Cvae] -> [B, Cvae, *grid_si] (inverse of the row-major flatten)."""
        n = self.tokens_per_scale[si]
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (n, self.latent_dim):
            raise ValueError(f"codes of scale {si} have shape {tuple(codes.shape)}, "
                             f"expected [B, {n}, {self.latent_dim}]")
        return codes.transpose(1, 2).reshape(codes.shape[0], self.latent_dim, *self.grids[si])

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, codec_type={self.codec_type!r}, grids={self.grids}, "
                f"latent_dim={self.latent_dim}, codebook_size={self.codebook_size}")


# ---------------------------------------------------------------------- registry and folders
C = TypeVar("C", bound=type[ModalityCodec])


def register_codec(cls: C) -> C:
    """Class decorator: make `load_codec` dispatch folders whose codec.json names cls.codec_type."""
    codec_type = getattr(cls, "codec_type", None)
    if not isinstance(codec_type, str) or not codec_type:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute codec_type")
    known = CODEC_REGISTRY.get(codec_type)
    if known is not None and known is not cls:
        raise ValueError(f"codec_type {codec_type!r} is already registered to {known.__qualname__}")
    CODEC_REGISTRY[codec_type] = cls
    return cls


def write_codec_config(folder: str | os.PathLike, config: dict) -> None:
    if "codec_type" not in config:
        raise ValueError("a codec config needs a 'codec_type'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CODEC_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_codec_config(folder: str | os.PathLike, codec_type: str | None = None) -> dict:
    """A codec folder's codec.json; with `codec_type`, checked to name that type."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such codec folder")
    path = folder / CODEC_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CODEC_CONFIG_NAME} (expected a folder written by "
                                "ModalityCodec.save_pretrained)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(config, dict) or "codec_type" not in config:
        raise ValueError(f"{path}: expected a JSON object with a 'codec_type'")
    if codec_type is not None and config["codec_type"] != codec_type:
        raise ValueError(f"{folder}: codec_type {config['codec_type']!r} is not {codec_type!r}")
    return config


def codec_subfolder(folder: str | os.PathLike, config: dict, key: str, default: str) -> Path:
    """The folder codec.json names under `key` (relative to the codec folder); it must lie inside the codec
    folder, so a model folder cannot make a loader read files from elsewhere on the machine."""
    folder = Path(folder)
    name = config.get(key, default)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{folder / CODEC_CONFIG_NAME}: {key!r} must be a folder name, got {name!r}")
    sub = (folder / name).resolve()
    if not sub.is_relative_to(folder.resolve()):
        raise ValueError(f"{folder / CODEC_CONFIG_NAME}: {key} {name!r} points outside the codec folder")
    return sub


def load_codec(folder: str | os.PathLike) -> ModalityCodec:
    """Load any registered codec from its folder, dispatching on codec.json's codec_type."""
    codec_type = read_codec_config(folder)["codec_type"]
    cls = CODEC_REGISTRY.get(codec_type)
    if cls is None:
        raise ValueError(f"{folder}: unknown codec_type {codec_type!r}; known: {sorted(CODEC_REGISTRY)}")
    return cls.from_pretrained(folder)
