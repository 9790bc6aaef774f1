"""Per-modality heads: how a modality's hybrid tokens enter the backbone and how they leave it.

In: scale 0 reads a learned start embedding; scale k > 0 reads `word_embed` of the downsampled
latent after scales < k (VAR/HART); the optional last group reads the complete latent. Each input
gets a scale embedding and the modality's own embedding.
Out: codebook logits per scale (optionally plus a term tied to the codebook's latents), and at the
last scale the residual diffusion head conditioned on z = norm(h + word_embed(e(code))), as in HART.

A new modality registers a head class here (or reuses `ModalityHead`) and a codec in `modalities/`;
the backbone and the generation loop stay as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from hart_core.diffusion import ResidualDiffusionHead
from hart_core.layers import RMSNorm
from modalities import item_specials

HEADS: dict[str, type] = {}


def register_head(name: str):
    def deco(cls):
        HEADS[name] = cls
        return cls

    return deco


@dataclass
class HeadConfig:
    """One modality's head, and how that modality is sampled by default."""

    modality: str = "image"
    head_type: str = "hybrid"
    diff_width: int = 256
    diff_depth: int = 3
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    vae_scale: float = 0.6  # residuals are divided by it for the diffusion head (HART's value for images)
    # add to the free per-code logits a score tied to the codebook, (W h) . e_k: codes whose latents
    # are alike get alike logits, so what is learned about one code carries over to its neighbours
    codebook_logits: bool = False
    # how the complete latent (what captioning and QA read) enters the backbone: "linear" (word_embed only, as
    # the scale groups) or "conv" (plus a small convolutional network over the latent grid, so each position
    # arrives knowing its neighbourhood: a shape spans several latent positions). The conv branch starts at
    # zero, so a "linear" checkpoint loads into a "conv" head and begins as the same model
    reader: str = "linear"
    reader_width: int = 64
    # sampling defaults of this modality (a model's own best, chosen after training)
    default_cfg: float = 3.0
    # None follows HART's released schedule (600, then 300); 1 is greedy (on the default model it helps
    # training-split prompts but draws only seen combinations)
    default_top_k: int | None = None
    # specials around an item of this modality; "" = the modality's own (modalities.item_specials)
    begin: str = ""
    end: str = ""

    def __post_init__(self) -> None:
        if self.reader not in ("linear", "conv"):
            raise ValueError(f"reader={self.reader!r}: expected 'linear' or 'conv'")
        default_begin, default_end = item_specials(self.modality)
        self.begin, self.end = self.begin or default_begin, self.end or default_end

    def to_dict(self) -> dict:
        return asdict(self)


@register_head("hybrid")
class ModalityHead(nn.Module):
    def __init__(self, config: HeadConfig, hidden: int, latent_dim: int, codebook_size: int, num_scales: int,
                 norm_eps: float = 1e-6, grid: tuple[int, ...] | None = None):
        super().__init__()
        self.config = config
        self.num_scales = num_scales
        # Embedding tables rather than bare Parameters, and read through module calls: under ZeRO-3 a
        # parameter is only gathered when its module runs.
        self.start = nn.Embedding(1, hidden)
        self.word_embed = nn.Linear(latent_dim, hidden)
        self.scale_embed = nn.Embedding(num_scales + 1, hidden)  # + the complete-latent group
        self.modality_embed = nn.Embedding(1, hidden)
        for table in (self.start, self.scale_embed):
            nn.init.normal_(table.weight, std=0.02)
        nn.init.zeros_(self.modality_embed.weight)
        self.head = nn.Linear(hidden, codebook_size)
        self.code_query = nn.Linear(hidden, latent_dim, bias=False) if config.codebook_logits else None
        self.cond_norm = RMSNorm(hidden, norm_eps)
        self.reader = ConvReader(latent_dim, hidden, config.reader_width, grid) if config.reader == "conv" else None
        self.diffusion = ResidualDiffusionHead(
            target_channels=latent_dim, z_channels=hidden, width=config.diff_width, depth=config.diff_depth,
            num_sampling_steps=config.num_sampling_steps, vae_scale=config.vae_scale,
        )

    def embed(self, group: int, latent_tokens: torch.Tensor | None, batch: int, n: int) -> torch.Tensor:
        """Inputs of one group: [B, n, hidden]. latent_tokens [B, n, latent_dim] (None for scale 0)."""
        zero = torch.zeros(1, dtype=torch.long, device=self.scale_embed.weight.device)
        extra = self.scale_embed(zero + group) + self.modality_embed(zero)  # [1, hidden]
        if latent_tokens is None:
            return (self.start(zero) + extra).expand(batch, n, -1)
        x = self.word_embed(latent_tokens.to(self.word_embed.weight.dtype)) + extra
        if self.reader is not None and group == self.num_scales:
            x = x + self.reader(latent_tokens.to(x.dtype))
        return x

    def logits(self, hidden: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Code logits [..., V] from hidden states [..., D]; codebook [V, latent_dim] is the codec's."""
        logits = self.head(hidden).float()
        if self.code_query is not None:
            logits = logits + self.code_query(hidden).float() @ codebook.float().T
        return logits

    def diffusion_condition(self, hidden: torch.Tensor, code_embeddings: torch.Tensor) -> torch.Tensor:
        return self.cond_norm(hidden + self.word_embed(code_embeddings.to(hidden.dtype)))


class ConvReader(nn.Module):
    """[B, n, latent_dim] tokens of a complete latent on `grid` (n = prod(grid); a 1-D grid is a row) ->
    [B, n, hidden]: two 3x3 convolutions, the second zero-initialised."""

    def __init__(self, latent_dim: int, hidden: int, width: int, grid: tuple[int, ...] | None):
        super().__init__()
        if grid is None:
            raise ValueError("reader='conv' needs the codec's latent grid")
        self.grid = (1, *grid) if len(grid) == 1 else tuple(grid)
        self.conv_in = nn.Conv2d(latent_dim, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, hidden, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, n, C = tokens.shape
        x = tokens.transpose(1, 2).reshape(B, C, *self.grid)
        x = self.conv_out(nn.functional.gelu(self.conv_in(x)))
        return x.flatten(2).transpose(1, 2)


def build_head(config: HeadConfig, **kwargs) -> nn.Module:
    if config.head_type not in HEADS:
        raise ValueError(f"unknown head type {config.head_type!r} (registered: {sorted(HEADS)})")
    return HEADS[config.head_type](config, **kwargs)
