"""HART's transformer blocks for generation at the cost of their math.

The eager path (`HARTTransformer.step`) is the reference: it matches the released code bit for bit, and
pays for it in operations. Per block and scale it rebuilds the q/k/v bias, reshapes and casts the RoPE
tables and the AdaLN modulation, rotates with chunk + neg + cat, normalises with 6 ops and grows the
KV cache with `torch.cat`. `FastBlocks` does the same math with everything that depends only on the
condition or on the scale schedule computed once per generation, a KV cache allocated once, fused
RMSNorm (`F.rms_norm`), q and k normalised and rotated together, and the rotation as one matmul. A scale
step is then ~32 operations a block instead of ~80, and has static shapes, so it can be captured
(`torch.compile`; on CUDA `mode="reduce-overhead"` replays it as a CUDA graph).

It is not bit-exact with the eager path: the fused norm rounds once instead of twice, the temperature
multiplies the normalised q before the rotation instead of after the cast, and additions fuse with
multiplies (`addcmul`). In fp32 the hidden states agree to ~1e-6 relative (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transformer import Conditioning, HARTTransformer

Tensor = torch.Tensor


def rotate_half_matrix(head_dim: int, device=None, dtype=None) -> Tensor:
    """P with x @ P == rotate_half(x) = cat(-x2, x1): a signed permutation, so the product is exact."""
    half = head_dim // 2
    p = torch.zeros(head_dim, head_dim, device=device, dtype=dtype)
    idx = torch.arange(half, device=device)
    p[idx + half, idx] = -1.0  # output i < half takes -x[i + half]
    p[idx, idx + half] = 1.0  # output i >= half takes x[i - half]
    return p


@dataclass
class StaticKVCache:
    """Keys and values of every block, allocated once for the whole sequence: [depth, rows, heads,
    capacity, head_dim] each. `views(start, end)` hands out per-block slices (one op for all blocks)."""

    keys: Tensor
    values: Tensor

    @classmethod
    def allocate(cls, depth: int, rows: int, heads: int, capacity: int, head_dim: int,
                 device=None, dtype=None) -> StaticKVCache:
        shape = (depth, rows, heads, capacity, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def views(self, start: int, end: int) -> tuple[tuple[Tensor, ...], ...]:
        """(keys to write, values to write, keys to read, values to read), each a tuple over blocks."""
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions, a step needs {end}")
        return (self.keys[:, :, :, start:end].unbind(0), self.values[:, :, :, start:end].unbind(0),
                self.keys[:, :, :, :end].unbind(0), self.values[:, :, :, :end].unbind(0))


@dataclass
class BlockTables:
    """Per block, what the eager path recomputes at every scale: weights gathered, bias concatenated,
    modulation split (scale + 1 added once), temperature for q and k (k: 1)."""

    norm_weight: Tensor
    qkv_weight: Tensor
    qkv_bias: Tensor
    qk_temperature: Tensor | None  # [2, 1, H, 1, 1] or None without l2-normalised attention
    attn_scale: float
    proj_weight: Tensor
    proj_bias: Tensor
    gate_weight: Tensor
    up_weight: Tensor
    down_weight: Tensor
    modulation: tuple[Tensor, ...] | None  # gamma1, gamma2, scale1 + 1, scale2 + 1, shift1, shift2: [rows, 1, C]


class FastBlocks:
    """The blocks of one `HARTTransformer`, prepared for one batch of rows (the CFG pair included).

    `prepare(cond)` once per generation; then `step(scale, h)` per scale writes the KV cache in place and
    returns the hidden states of the scale's tokens. With `compile=True` every scale step is compiled once
    (static shapes; `reduce-overhead`, i.e. a CUDA graph, on CUDA) and replayed in later generations.
    """

    def __init__(self, transformer: HARTTransformer, rows: int, *, compile: bool = False):
        self.transformer = transformer
        c = transformer.config
        w = transformer.word_embed.weight
        self.rows, self.dtype, self.device = rows, w.dtype, w.device
        self.heads, self.head_dim = c.num_heads, transformer.head_dim
        self.sizes = [c.context_token] + [p * p for p in c.patch_nums[1:]]
        self.starts = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        self.cache = StaticKVCache.allocate(c.depth, rows, self.heads, sum(self.sizes), self.head_dim,
                                            self.device, self.dtype)
        self.rotate = rotate_half_matrix(self.head_dim, self.device, self.dtype)
        if compile and self.device.type == "cuda":
            # a CUDA graph may only mutate inputs at fixed addresses
            torch._dynamo.mark_static_address(self.cache.keys)
            torch._dynamo.mark_static_address(self.cache.values)
        self._run = self._run_blocks
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._run = torch.compile(self._run_blocks, mode=mode, dynamic=False)
            # one graph per scale by design (static shapes): let dynamo keep them all, not just 8
            limit = 2 * len(self.sizes) + 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
        self.blocks: list[BlockTables] = []
        self.ropes: list[tuple[Tensor, Tensor]] = []

    # -- once per generation ------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, cond: Conditioning) -> None:
        if cond.tokens.shape[0] != self.rows:
            raise ValueError(f"prepared for {self.rows} rows, the condition has {cond.tokens.shape[0]}")
        self.blocks = [self._tables(block, mod) for block, mod in zip(self.transformer.blocks, cond.block_mods,
                                                                      strict=True)]
        self.ropes = self._rope_tables(cond)

    def _tables(self, block, mod: Tensor | None) -> BlockTables:
        attn, dtype = block.attn, self.dtype
        temperature = None
        if attn.l2_norm:
            q_temp = attn.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
            temperature = torch.stack((q_temp, torch.ones_like(q_temp))).to(dtype)
        modulation = None
        if mod is not None:
            m = mod.to(dtype).unsqueeze(2)  # [rows, 6, 1, C]
            gamma1, gamma2, scale1, scale2, shift1, shift2 = m.unbind(1)
            modulation = (gamma1, gamma2, scale1 + 1, scale2 + 1, shift1, shift2)
        return BlockTables(
            norm_weight=block.ln_wo_grad.weight.to(dtype),
            qkv_weight=attn.qkv_proj.weight,
            qkv_bias=torch.cat((attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias)),
            qk_temperature=temperature,
            attn_scale=attn.scale,
            proj_weight=attn.proj.weight,
            proj_bias=attn.proj.bias,
            gate_weight=block.ffn.gate_proj.weight,
            up_weight=block.ffn.up_proj.weight,
            down_weight=block.ffn.down_proj.weight,
            modulation=modulation,
        )

    def _rope_tables(self, cond: Conditioning) -> list[tuple[Tensor, Tensor]]:
        """cos/sin [rows, 1, n, head_dim] of every scale (the transformer's own tables), shaped and cast once."""
        tr = self.transformer
        tables = [tr.context_rope(cond)] + [tr.image_rope(cond, k) for k in range(1, len(self.sizes))]
        return [(cos.unsqueeze(1).to(self.dtype), sin.unsqueeze(1).to(self.dtype)) for cos, sin in tables]

    # -- once per scale -----------------------------------------------------------------------------

    def step(self, scale: int, h: Tensor) -> Tensor:
        """Run the blocks on scale `scale`'s inputs h [rows, n, C] (already embedded, level added)."""
        if not self.blocks:
            raise RuntimeError("call prepare(cond) before step()")
        cos, sin = self.ropes[scale]
        return self._run(h, cos, sin, self.blocks, self.cache.keys, self.cache.values, self.starts[scale])

    def _run_blocks(self, h: Tensor, cos: Tensor, sin: Tensor, blocks: Sequence[BlockTables],
                    keys: Tensor, values: Tensor, start: int) -> Tensor:
        B, n, C = h.shape
        eps = self.transformer.config.norm_eps
        # the cache goes in whole (a captured graph mutates it in place); its per-block views are made here
        k_write, v_write, k_read, v_read = StaticKVCache(keys, values).views(start, start + n)
        for i, t in enumerate(blocks):
            x = F.rms_norm(h, (C,), t.norm_weight, eps)
            if t.modulation is not None:
                gamma1, gamma2, scale1, scale2, shift1, shift2 = t.modulation
                x = torch.addcmul(shift1, x, scale1)
            qkv = F.linear(x, t.qkv_weight, t.qkv_bias).unflatten(-1, (3, self.heads, self.head_dim))
            qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, n, hd]
            qk = qkv[:2]
            if t.qk_temperature is not None:
                qk = qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(1e-12)
                qk = qk * t.qk_temperature
            qk = torch.addcmul(qk * cos, qk @ self.rotate, sin)
            q, k = qk.unbind(0)
            k_write[i].copy_(k)
            v_write[i].copy_(qkv[2])
            out = F.scaled_dot_product_attention(q, k_read[i], v_read[i], scale=t.attn_scale)
            attn = F.linear(out.transpose(1, 2).reshape(B, n, C), t.proj_weight, t.proj_bias)
            if t.modulation is None:
                h = h + attn
                x = F.rms_norm(h, (C,), t.norm_weight, eps)
            else:
                h = torch.addcmul(h, attn, gamma1)
                x = torch.addcmul(shift2, F.rms_norm(h, (C,), t.norm_weight, eps), scale2)
            ffn = F.linear(F.silu(F.linear(x, t.gate_weight)) * F.linear(x, t.up_weight), t.down_weight)
            h = h + ffn if t.modulation is None else torch.addcmul(h, ffn, gamma2)
        return h

