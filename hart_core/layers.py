"""Building blocks of the HART transformer: RMSNorm, rotary embeddings, AdaLN attention blocks.

Parameter names follow the released checkpoints (`blocks.{i}.attn.qkv_proj`, `ada_lin.1`, ...), so
official weights load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMSNorm with fp32 statistics; the normalised value is rounded to the input dtype before the
    weight multiply, which is what the official fused CUDA kernel does. The weight always exists,
    even where the official code declares `elementwise_affine=False` (its kernel ignores that flag)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings. Both return cos/sin of shape [B, L, head_dim] in fp32.


def rope_1d(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """Standard Llama RoPE for text/context tokens at integer `positions` [B, L]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rope_2d(coords: torch.Tensor, head_dim: int, base: float = 10000.0):
    """HART's 2-D RoPE for image tokens at (row, col) `coords` [B, L, 2].

    Frequencies have stride 4 but are normalised by head_dim, and the layout per head is
    [row, row, col, col] (each head_dim/4 wide) rotated with Llama's rotate_half, so element i pairs
    with i + head_dim/2: the first half carries the row angle, the second the column angle. This is
    not a textbook 2-D rotation, but the released weights were trained with it.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 4, device=coords.device).float() / head_dim))
    rows = coords[..., 0:1].float() * inv_freq
    cols = coords[..., 1:2].float() * inv_freq
    emb = torch.cat((rows, rows, cols, cols), dim=-1)
    return emb.cos(), emb.sin()


def scale_coords(pn: int, pn_last: int, device=None) -> torch.Tensor:
    """(row, col) of every cell of a pn x pn scale, stretched to the final pn_last grid: [pn*pn, 2].

    Computed as (i / pn) * pn_last in fp32 (non-integer when pn does not divide pn_last), exactly as
    the reference does.
    """
    i = torch.arange(pn, device=device)
    grid = torch.stack(torch.meshgrid(i, i, indexing="ij"), dim=-1).reshape(-1, 2)
    return grid / pn * pn_last


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, L, hd]; cos/sin: [B, L, hd]."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Per-block keys/values that grow by one scale per generation step."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]

    @classmethod
    def empty(cls, depth: int) -> KVCache:
        return cls([None] * depth, [None] * depth)

    def extend(self, block: int, k: torch.Tensor, v: torch.Tensor):
        if self.keys[block] is not None:
            k = torch.cat((self.keys[block], k), dim=2)
            v = torch.cat((self.values[block], v), dim=2)
        self.keys[block], self.values[block] = k, v
        return k, v

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, l2_norm: bool = True):
        super().__init__()
        assert dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        # K has no bias (a constant K bias cancels in softmax); the checkpoint's zero_k_bias is dropped.
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.l2_norm = l2_norm
        if l2_norm:
            # cosine attention with a learned per-head temperature, capped at 100
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        block: int = 0,
    ) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv_proj.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, hd]
        if self.l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
            q = F.normalize(q, dim=-1).mul(temperature)
            k = F.normalize(k, dim=-1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(block, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Official hidden width: 2/3 of dim*mlp_ratio rounded up to a multiple of 256."""
    return int(dim * mlp_ratio * 2 / 3 + 255) // 256 * 256


def pool_context(tokens: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, T, C] -> [B, C]. "max" ignores the mask (as the reference does); "avg" is a masked mean."""
    if mode == "max":
        return tokens.max(dim=1).values
    if mode == "avg":
        m = mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * m / m.sum(1).clamp(min=1).unsqueeze(1)).sum(1)
    raise ValueError(f"unknown context pooling mode {mode!r} (expected 'max' or 'avg')")


class AdaLNBlock(nn.Module):
    """Pre-norm attention + SwiGLU block modulated by the pooled text condition.

    Three official variants: per-block AdaLN (`ada_lin`), a shared modulation table plus the
    masked-mean condition (`disable_aln` + `shared_aln`, the released 0.7B model), or no modulation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        norm_eps: float,
        attn_l2_norm: bool,
        disable_aln: bool,
        shared_aln: bool,
        pooling: str,
    ):
        super().__init__()
        self.dim, self.pooling = dim, pooling
        self.mode = "table" if disable_aln and shared_aln else "none" if disable_aln else "adaln"
        self.ln_wo_grad = RMSNorm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, attn_l2_norm)
        self.ffn = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        if self.mode == "adaln":
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        elif self.mode == "table":
            self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """[B, 6, C] = (gamma1, gamma2, scale1, scale2, shift1, shift2), or None without AdaLN."""
        if self.mode == "adaln":
            return self.ada_lin(pool_context(cond, mask, self.pooling)).view(-1, 6, self.dim)
        if self.mode == "table":
            # the shared table always uses the masked mean, whatever the pooling setting says
            return self.scale_shift_table[None] + pool_context(cond, mask, "avg")[:, None]
        return None

    def forward(self, x, mod, cos, sin, attn_mask=None, cache=None, block=0) -> torch.Tensor:
        if mod is None:
            x = x + self.attn(self.ln_wo_grad(x), cos, sin, attn_mask, cache, block)
            return x + self.ffn(self.ln_wo_grad(x))
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.to(x.dtype).unsqueeze(2).unbind(1)
        h = self.ln_wo_grad(x) * (scale1 + 1) + shift1
        x = x + self.attn(h, cos, sin, attn_mask, cache, block) * gamma1
        h = self.ln_wo_grad(x) * (scale2 + 1) + shift2
        return x + self.ffn(h) * gamma2


class AdaLNBeforeHead(nn.Module):
    """Final norm before the codebook head; always max-pools the condition over all slots."""

    def __init__(self, dim: int, norm_eps: float):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = RMSNorm(dim, norm_eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        return self.ada_lin(cond.max(dim=1).values).view(-1, 2, self.dim)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        scale, shift = mod.to(x.dtype).unsqueeze(2).unbind(1)
        return self.ln_wo_grad(x) * (scale + 1) + shift
