"""`HARTPipeline`: prompts -> images with a tokenizer, a transformer and a text encoder.

Folders it reads:
- a released HART folder (`llm/` + `tokenizer/`, as on the hub) via `from_official`, or
- this project's converted folder (`transformer/` + `tokenizer/`, written by `save_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .fast_generate import FastPath, fast_path
from .generate import PreviewFn, generate_images
from .text_encoder import TextEncoder
from .tokenizer import HARTTokenizer
from .transformer import HARTTransformer


class HARTPipeline:
    def __init__(
        self,
        tokenizer: HARTTokenizer,
        transformer: HARTTransformer,
        text_encoder: TextEncoder | None = None,
    ):
        self.tokenizer, self.transformer, self.text_encoder = tokenizer, transformer, text_encoder
        self.fast: FastPath | None = None  # the reference (eager) path until `use_path` says otherwise
        if tokenizer.quantize.embedding.weight.shape != (
            transformer.config.vocab_size, transformer.config.latent_dim
        ):
            raise ValueError("tokenizer codebook does not match the transformer's vocab_size/latent_dim")

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_official(cls, hart_dir: str | os.PathLike, text_encoder: TextEncoder | None = None):
        hart_dir = Path(hart_dir)
        for sub in ("llm", "tokenizer"):
            if not (hart_dir / sub).is_dir():
                raise CheckpointError(f"{hart_dir}: expected a released HART folder with {sub}/ inside")
        tok = HARTTokenizer.from_official(hart_dir / "tokenizer")
        tr = HARTTransformer.from_official(hart_dir / "llm", hart_dir / "tokenizer")
        return cls(tok, tr, text_encoder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, text_encoder: TextEncoder | None = None):
        """Our own layout (`transformer/`, `tokenizer/`) or, failing that, the released one."""
        folder = Path(folder)
        if (folder / "transformer").is_dir():
            return cls(
                HARTTokenizer.from_pretrained(folder / "tokenizer"),
                HARTTransformer.from_pretrained(folder / "transformer"),
                text_encoder,
            )
        if (folder / "llm").is_dir():
            return cls.from_official(folder, text_encoder)
        raise CheckpointError(f"{folder}: neither transformer/+tokenizer/ nor llm/+tokenizer/ inside")

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.transformer.save_pretrained(folder / "transformer")

    def to(self, device=None, dtype: torch.dtype | None = None) -> HARTPipeline:
        # the tokenizer stays fp32: its latent arithmetic (phi, bicubic) is cheap and precision-sensitive
        self.tokenizer.to(device)
        self.transformer.to(device=device, dtype=dtype)
        self.transformer.diffusion_head.float()
        if self.text_encoder is not None:
            self.text_encoder.model.to(device=device, dtype=dtype)
        return self

    def use_path(self, path: str, decode_dtype: torch.dtype | None = None) -> HARTPipeline:
        """"eager": the reference path (bit-exact with the released code); "fast": static KV cache and
        fused ops (the same draws, fp32 rounding apart; see hart_core/fast_blocks.py); "compiled": the fast
        path with each scale step, diffusion step and the VAE decode compiled once (CUDA graphs on CUDA;
        slow to start). `decode_dtype`: the fast paths' VAE decode precision (None: the tokenizer's, fp32)."""
        self.fast = fast_path(self.transformer, path, decode_dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # -- generation --------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]):
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder; pass context tensors instead")
        context, mask, positions = self.text_encoder(prompts)
        return context.to(self.device), mask.to(self.device), positions.to(self.device)

    @torch.no_grad()
    def __call__(
        self,
        prompts: list[str],
        *,
        cfg: float = 4.5,
        seed: int | None = 0,
        top_k: int | None = None,
        top_p: float = 0.0,
        more_smooth: bool = False,
        batch_size: int = 4,
        progress: bool = True,
        callback: PreviewFn | None = None,
    ) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] for N prompts, generated in batches. The same seed gives the
        same images for the same batch composition."""
        return torch.cat([images for _, images in self.batches(
            prompts, cfg=cfg, seed=seed, top_k=top_k, top_p=top_p, more_smooth=more_smooth,
            batch_size=batch_size, progress=progress, callback=callback)])

    @torch.no_grad()
    def batches(
        self,
        prompts: list[str],
        *,
        cfg: float = 4.5,
        seed: int | None = 0,
        top_k: int | None = None,
        top_p: float = 0.0,
        more_smooth: bool = False,
        batch_size: int = 4,
        progress: bool = True,
        callback: PreviewFn | None = None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, images [b, 3, H, W]) for each batch as soon as it is made (the same images as `__call__`),
        so a caller can write them batch by batch instead of holding them all."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        generator = torch.Generator(self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        dtype = next(self.transformer.parameters()).dtype
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
            context, mask, positions = self.encode_prompts(prompts[start : start + batch_size])
            yield start, generate_images(
                self.transformer, self.tokenizer, context.to(dtype), mask, positions,
                cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth,
                generator=generator, callback=callback, fast=self.fast,
            ).float().cpu()
