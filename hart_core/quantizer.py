"""HART's hybrid multi-scale residual quantizer (VAR's multi-scale VQ + a continuous residual).

A latent f on the grid G is explained coarse-to-fine: at scale k the current residual is
area-downsampled to grid_k, snapped to the nearest codebook entry, bicubic-upsampled back to G,
refined by a small conv phi_k and subtracted. HART keeps what is left after the last scale as a
continuous residual (predicted by its diffusion head), so discrete tokens + residual == f.

Two flavours coexist in the official code and both are reproduced here:
  * HART inference / tokenization (`encode`, `decode_fhat`, `next_scale_input`): the last scale
    lives on G already, so its codes are used raw (no phi).
  * VAR / training (`forward`, `fhat_var`, `teacher_forcing_input`): phi on every scale.
Latents are 2-D ([B, C, h, w]) or 1-D ([B, C, l]); all grids of one quantizer share that rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

Grid = tuple[int, ...]  # (h, w) for 2-D latents, (l,) for 1-D latents


@dataclass
class HybridTokens:
    """Discrete multi-scale indices plus the continuous residual of the last scale."""

    indices: list[torch.Tensor]  # per scale, Long [B, prod(grid_k)], row-major over the grid
    residual: torch.Tensor | None  # [B, prod(G), C] = f - discrete f_hat, token-major
    grids: tuple[Grid, ...]  # per-scale grid, last = latent grid G

    def __post_init__(self) -> None:
        self.grids = tuple(tuple(int(s) for s in g) for g in self.grids)
        if len(self.indices) != len(self.grids):
            raise ValueError(f"{len(self.indices)} index tensors for {len(self.grids)} grids")
        for k, (idx, g) in enumerate(zip(self.indices, self.grids, strict=True)):
            if idx.dim() != 2 or idx.shape[1] != math.prod(g):
                raise ValueError(f"indices[{k}] has shape {tuple(idx.shape)}, "
                                 f"expected [B, {math.prod(g)}] for grid {g}")

    @property
    def batch_size(self) -> int:
        return self.indices[0].shape[0]

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    def to(self, device: torch.device | str) -> HybridTokens:
        residual = None if self.residual is None else self.residual.to(device)
        return HybridTokens([i.to(device) for i in self.indices], residual, self.grids)

    def select(self, rows: slice | Sequence[int] | torch.Tensor) -> HybridTokens:
        """The given rows (a slice gives views, an index list copies)."""
        residual = None if self.residual is None else self.residual[rows]
        return HybridTokens([idx[rows] for idx in self.indices], residual, self.grids)

    def rows(self) -> list[HybridTokens]:
        """One HybridTokens per row, each with its own memory (not views that keep the batch alive)."""
        return [self.select(slice(i, i + 1)).clone() for i in range(self.batch_size)]

    def split(self, sizes: Sequence[int]) -> list[HybridTokens]:
        """Consecutive row groups of the given sizes (e.g. the segments of each item), as views."""
        if sum(sizes) != self.batch_size:
            raise ValueError(f"row sizes {list(sizes)} do not add up to the batch of {self.batch_size}")
        starts = np.cumsum([0, *sizes]).tolist()
        return [self.select(slice(a, b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]

    def clone(self) -> HybridTokens:
        residual = None if self.residual is None else self.residual.clone()
        return HybridTokens([i.clone() for i in self.indices], residual, self.grids)

    @staticmethod
    def concat(parts: Sequence[HybridTokens]) -> HybridTokens:
        """Rows of several HybridTokens of one ladder stacked into one batch. The residual is kept
        only when every part has one."""
        if not parts:
            raise ValueError("nothing to concatenate")
        grids = parts[0].grids
        for p in parts[1:]:
            if p.grids != grids:
                raise ValueError(f"cannot concatenate tokens of grids {p.grids} and {grids}")
        residuals = [p.residual for p in parts]
        residual = None if any(r is None for r in residuals) else torch.cat(residuals)
        return HybridTokens([torch.cat([p.indices[k] for p in parts]) for k in range(len(grids))],
                            residual, grids)


def _as_grids(grids: Sequence[Grid | int]) -> tuple[Grid, ...]:
    out = tuple((g, g) if isinstance(g, int) else tuple(int(s) for s in g) for g in grids)
    if len(out) < 2:
        raise ValueError("a multi-scale quantizer needs at least 2 scales")
    if len({len(g) for g in out}) != 1 or len(out[0]) not in (1, 2):
        raise ValueError(f"grids must be all 1-D or all 2-D, got {out}")
    return out


class MultiScaleResidualQuantizer(nn.Module):
    """Official `HARTHybridQuantizer` (submodule/buffer names kept for checkpoint loading)."""

    def __init__(self, vocab_size: int, dim: int, grids: Sequence[Grid], beta: float = 0.25,
                 quant_resi: float = 0.5, share_quant_resi: int = 4,
                 default_qresi_counts: int = 0):
        super().__init__()
        self.grids = _as_grids(grids)
        self.vocab_size, self.dim, self.beta = vocab_size, dim, beta
        self.ndim = len(self.grids[0])
        self.share_quant_resi = share_quant_resi
        self.resi_ratio = abs(quant_resi)
        num_scales = len(self.grids)

        conv_cls = nn.Conv1d if self.ndim == 1 else nn.Conv2d

        def make_phi() -> nn.Module:
            # a (near-)zero ratio means "no refinement" and the official code stores no conv then
            return conv_cls(dim, dim, 3, padding=1) if self.resi_ratio > 1e-6 else nn.Identity()

        # three official container layouts, which only differ in state_dict key names
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
        if share_quant_resi == 0:  # one phi per scale: quant_resi.{k}
            num_phi = default_qresi_counts or num_scales
            self.quant_resi = nn.ModuleList([make_phi() for _ in range(num_phi)])
        elif share_quant_resi == 1:  # a single shared phi: quant_resi.qresi
            num_phi = 1
            self.quant_resi = nn.Module()
            self.quant_resi.qresi = make_phi()
        else:  # K phis spread over the scales: quant_resi.qresi_ls.{k}
            num_phi = share_quant_resi
            self.quant_resi = nn.Module()
            self.quant_resi.qresi_ls = nn.ModuleList([make_phi() for _ in range(num_phi)])
        # phi_k sits at tick k in [0, 1]; scale si uses the tick nearest to si/(SN-1).
        # numpy float64 like the official code, so exact ties resolve to the same (first) phi.
        K = num_phi
        self._ticks = (np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4
                       else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K))

        self.embedding = nn.Embedding(vocab_size, dim)
        # codebook-usage statistics of the official VAR trainer; kept for checkpoint compatibility
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(num_scales, vocab_size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Released checkpoints may carry usage stats for a different number of scales (the
        # official loader swaps them for the fresh buffer); they are bookkeeping only.
        key = prefix + "ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.ema_vocab_hit_SV.shape:
            state_dict[key] = self.ema_vocab_hit_SV.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def _grids(self, grids: Sequence[Grid] | None) -> tuple[Grid, ...]:
        if grids is None:
            return self.grids
        grids = _as_grids(grids)
        if len(grids[0]) != self.ndim:
            raise ValueError(f"{len(grids[0])}-D grids given to a {self.ndim}-D quantizer")
        return grids

    def phi_index(self, si: int, num_scales: int | None = None) -> int:
        SN = len(self.grids) if num_scales is None else num_scales
        return int(np.argmin(np.abs(self._ticks - si / (SN - 1))))

    def _phi_conv(self, k: int) -> nn.Module:
        if self.share_quant_resi == 0:
            return self.quant_resi[k]
        if self.share_quant_resi == 1:
            return self.quant_resi.qresi
        return self.quant_resi.qresi_ls[k]

    def phi(self, si: int, h: torch.Tensor, num_scales: int | None = None) -> torch.Tensor:
        """phi(h) = (1-r) h + r conv(h) with the conv picked for scale si of num_scales."""
        conv = self._phi_conv(self.phi_index(si, num_scales))
        if isinstance(conv, nn.Identity):
            return h
        return h.mul(1 - self.resi_ratio) + conv(h).mul(self.resi_ratio)

    @staticmethod
    def _down(x: torch.Tensor, grid: Grid) -> torch.Tensor:
        # area to the same size is a copy, so skipping it is exact
        return x if tuple(x.shape[2:]) == grid else F.interpolate(x, size=grid, mode="area")

    @staticmethod
    def _up(x: torch.Tensor, grid: Grid) -> torch.Tensor:
        if tuple(x.shape[2:]) == grid:
            return x  # bicubic at scale 1 has weights (0, 1, 0, 0): an exact copy
        if x.dim() == 3:
            # 1-D cubic = 2-D bicubic on a height-1 map (height 1 -> 1 is a copy as above)
            return F.interpolate(x.unsqueeze(2), size=(1, *grid), mode="bicubic").squeeze(2)
        return F.interpolate(x, size=grid, mode="bicubic")

    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        """[B, C, *grid] -> token-major [B, prod(grid), C] (row-major over the grid)."""
        return x.flatten(2).transpose(1, 2)

    def _codes(self, idx: torch.Tensor, grid: Grid) -> torch.Tensor:
        """indices [B, prod(grid)] -> codebook vectors as a map [B, C, *grid]."""
        return self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], self.dim, *grid)

    def _check_latent(self, f: torch.Tensor, grids: tuple[Grid, ...]) -> None:
        expected = (self.dim, *grids[-1])
        if f.dim() != 2 + self.ndim or tuple(f.shape[1:]) != expected:
            raise ValueError(f"latent has shape {tuple(f.shape)}, expected [B, {expected}]")

    def _zeros(self, batch: int, grid: Grid) -> torch.Tensor:
        w = self.embedding.weight
        return w.new_zeros(batch, self.dim, *grid)

    # ------------------------------------------------------------------ quantization
    @torch.no_grad()
    def nearest_code(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each row of z [..., C] (first on ties)."""
        e = self.embedding.weight.detach().to(z.dtype)
        z2 = z.detach().reshape(-1, self.dim)
        # ||z||^2 + ||e||^2 - 2 z.e in the official order, so near-ties break identically
        d = z2.square().sum(1, keepdim=True) + e.square().sum(1)
        d.addmm_(z2, e.T, alpha=-2, beta=1)
        return d.argmin(1).reshape(z.shape[:-1])

    @torch.no_grad()
    def encode(self, f: torch.Tensor, grids: Sequence[Grid] | None = None) -> HybridTokens:
        """Official `f_to_idxBl_and_frest`: indices per scale + the continuous residual.

        No phi on the last scale (its codes already live on G); the residual is what the
        discrete tokens leave unexplained, so `decode_fhat(encode(f))` == f up to rounding.
        """
        return self.encode_correcting(f, 0.0, grids=grids)[0]

    @torch.no_grad()
    def encode_correcting(self, f: torch.Tensor, error_p: float, generator: torch.Generator | None = None,
                          grids: Sequence[Grid] | None = None) -> tuple[HybridTokens, list[torch.Tensor]]:
        """`encode` with errors made on the way, for training a model to correct its own (Infinity's bitwise
        self-correction, for codes): after choosing each scale's codes but the last, replace each by a
        uniformly drawn one with probability `error_p` before subtracting them, so every later scale's
        codes, and the residual, are the ones that correct the errors so far.

        Returns (labels, inputs): `labels` holds each scale's codes as chosen (the targets) and the final
        residual; `inputs` the codes as subtracted, errors included (what the model reads as its own
        earlier scales). error_p = 0 is `encode`, with inputs == labels.indices.
        """
        grids = self._grids(grids)
        self._check_latent(f, grids)
        if not 0.0 <= error_p < 1.0:
            raise ValueError(f"error_p must be in [0, 1), got {error_p}")
        G, SN = grids[-1], len(grids)
        f_rest = f.detach().to(self.embedding.weight.dtype)
        labels, inputs = [], []
        for si, grid in enumerate(grids):
            idx = self.nearest_code(self._tokens(self._down(f_rest, grid)))
            labels.append(idx)
            if 0 < error_p and si < SN - 1:
                # drawn on the generator's device (a CUDA generator cannot fill a CPU tensor)
                where = generator.device if generator is not None else idx.device
                wrong = torch.rand(idx.shape, generator=generator, device=where) < error_p
                drawn = torch.randint(self.vocab_size, idx.shape, generator=generator, device=where)
                idx = torch.where(wrong.to(idx.device), drawn.to(idx.device), idx)
            inputs.append(idx)
            h = self._codes(idx, grid)
            if si < SN - 1:
                f_rest = f_rest - self.phi(si, self._up(h, G), SN)
            else:
                residual = self._tokens(f_rest - h)
        return HybridTokens(labels, residual, grids), inputs

    def _check_indices(self, indices: Sequence[torch.Tensor], grids: tuple[Grid, ...],
                       need: int) -> None:
        if len(indices) < need:
            raise ValueError(f"expected at least {need} index tensors, got {len(indices)}")
        for k in range(need):
            if indices[k].shape[-1] != math.prod(grids[k]):
                raise ValueError(f"indices[{k}] has {indices[k].shape[-1]} tokens, "
                                 f"grid {grids[k]} needs {math.prod(grids[k])}")

    def next_scale_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor,
                         grids: Sequence[Grid] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of HART inference (official hybrid `get_next_autoregressive_input`).

        h: codes of scale si as [B, C, *grid_si] (or any [B, C, *grid_si] features).
        For si < SN-1 returns (f_hat + phi_si(up(h)), area_down(new f_hat) to grid_{si+1}
        as [B, n_{si+1}, C]); for the last scale (f_hat + h, f_hat + h) without phi.
        Unlike the official code f_hat is NOT updated in place: use the returned tensor.
        """
        grids = self._grids(grids)
        G, SN = grids[-1], len(grids)
        if si == SN - 1:
            f_hat = f_hat + h
            return f_hat, f_hat
        f_hat = f_hat + self.phi(si, self._up(h, G), SN)
        return f_hat, self._tokens(self._down(f_hat, grids[si + 1]))

    def decode_fhat(self, tokens: HybridTokens, with_residual: bool = True) -> torch.Tensor:
        """HART inference f_hat on tokens.grids: sum_{k<last} phi_k(up(e_k)) + e_last [+ residual].

        The residual is added only when with_residual and tokens.residual is not None.
        """
        grids = self._grids(tokens.grids)
        self._check_indices(tokens.indices, grids, len(grids))
        f_hat = self._zeros(tokens.batch_size, grids[-1])
        for si, (idx, grid) in enumerate(zip(tokens.indices, grids, strict=True)):
            f_hat, _ = self.next_scale_input(si, f_hat, self._codes(idx, grid), grids)
        if with_residual and tokens.residual is not None:
            r = tokens.residual.transpose(1, 2).reshape(f_hat.shape)
            f_hat = f_hat + r
        return f_hat

    def fhat_var(self, indices: Sequence[torch.Tensor], progressive: bool = False,
                 grids: Sequence[Grid] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """VAR f_hat (official `embed_to_fhat(all_to_max_scale=True)`): phi on every scale.

        progressive=True returns the cumulative f_hat after each scale.
        """
        grids = self._grids(grids)
        SN, G = len(grids), grids[-1]
        self._check_indices(indices, grids, SN)
        f_hat = self._zeros(indices[0].shape[0], G)
        steps = []
        for si in range(SN):
            f_hat = f_hat + self.phi(si, self._up(self._codes(indices[si], grids[si]), G), SN)
            steps.append(f_hat)
        return steps if progressive else f_hat

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor],
                              grids: Sequence[Grid] | None = None) -> torch.Tensor:
        """Official `idxBl_to_var_input`: inputs of scales 1..SN-1, [B, sum_{k>=1} n_k, C].

        Only indices[0..SN-2] are read (the last scale is never an input).
        """
        grids = self._grids(grids)
        SN = len(grids)
        self._check_indices(indices, grids, SN - 1)
        f_hat = self._zeros(indices[0].shape[0], grids[-1])
        inputs = []
        for si in range(SN - 1):
            f_hat, nxt = self.next_scale_input(si, f_hat, self._codes(indices[si], grids[si]),
                                               grids)
            inputs.append(nxt)
        return torch.cat(inputs, dim=1)

    # ------------------------------------------------------------------ training
    def forward(self, f: torch.Tensor, continuous: bool, grids: Sequence[Grid] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, float, list[torch.Tensor]]:
        """Training pass (official `HARTHybridQuantizer.forward`).

        Returns (f_hat, vq_loss, usage %, indices [B, n_k] per scale). f_hat carries the
        straight-through gradient to f; vq_loss = mean over scales of
        beta*mse(sg[f_hat_k], f) + mse(f_hat_k, sg[f]) trains the encoder (commitment) and the
        codebook/phi. Unlike inference, phi is applied on every scale here (VAR training);
        `continuous=True` adds the final remainder (official p >= skip_continuous_prob), making
        the forward value equal to f. The vq loss never includes the continuous part.
        """
        grids = self._grids(grids)
        self._check_latent(f, grids)
        G, SN = grids[-1], len(grids)
        with torch.autocast(device_type=f.device.type, enabled=False):
            f = f.float()
            f_ng = f.detach()
            f_rest = f_ng
            f_hat = torch.zeros_like(f_ng)
            vq_loss = f.new_zeros(())
            hits = torch.zeros(self.vocab_size, device=f.device)
            indices = []
            for si, grid in enumerate(grids):
                idx = self.nearest_code(self._tokens(self._down(f_rest, grid)))
                indices.append(idx)
                hits += torch.bincount(idx.flatten(), minlength=self.vocab_size).float()
                h = self.phi(si, self._up(self._codes(idx, grid), G), SN)
                f_hat = f_hat + h
                f_rest = f_rest - h
                vq_loss = vq_loss + (F.mse_loss(f_hat.detach(), f).mul(self.beta)
                                     + F.mse_loss(f_hat, f_ng))
            if continuous:
                f_hat = f_hat + f_rest
            vq_loss = vq_loss * (1.0 / SN)
            f_hat = (f_hat.detach() - f_ng) + f  # straight-through estimator
        if self.training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits)  # usage over the global batch, as the official trainer
        usages = (hits >= 1).float().mean().item() * 100
        return f_hat, vq_loss, usages, indices
