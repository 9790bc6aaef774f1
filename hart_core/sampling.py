"""Token sampling for next-scale generation: top-k / top-p, Gumbel smoothing, HART's CFG schedule.

Every random draw goes through an explicit torch.Generator; nothing touches the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class RowGenerators:
    """One torch.Generator per batch row: each row draws exactly what it would draw in a batch of its own
    with that generator, so independent requests batched together (a server) keep their seeds.

    Tensors it fills are laid out with the rows as contiguous groups along dim 0 (row 0's entries, then
    row 1's, ...), possibly repeated in S blocks (the CFG streams): dim 0 = S * rows * group."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)
        if not self.generators:
            raise ValueError("RowGenerators needs at least one generator")

    def __len__(self) -> int:
        return len(self.generators)

    def _split(self, n: int, group: int | None) -> tuple[int, int]:
        B = len(self.generators)
        group = group or n // B
        if group * B == 0 or n % (group * B):
            raise ValueError(f"{n} entries do not split into {B} rows of {group}")
        return n // (group * B), group

    def multinomial(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per row of probs [B * m, V] (row b's m distributions contiguous) -> [B * m, 1]."""
        _, m = self._split(probs.shape[0], None)
        return torch.cat([torch.multinomial(probs[b * m : (b + 1) * m], 1, generator=g)
                          for b, g in enumerate(self.generators)])

    def randn(self, shape: Sequence[int], group: int, device=None, dtype=None) -> torch.Tensor:
        """Normal noise of `shape`, dim 0 = S * B * group: row b draws its S blocks of `group` in one call."""
        S, group = self._split(shape[0], group)
        rest = tuple(shape[1:])
        parts = [torch.randn((S, group, *rest), generator=g, device=device, dtype=dtype) for g in self.generators]
        return torch.stack(parts, dim=1).reshape(tuple(shape))

    def exponential_like(self, t: torch.Tensor) -> torch.Tensor:
        """Exp(1) draws shaped like t [B, ...] in fp32, row b from its own generator."""
        self._split(t.shape[0], 1)
        return torch.stack([torch.empty(t.shape[1:], dtype=torch.float32, device=t.device).exponential_(generator=g)
                            for g in self.generators])


Generator = torch.Generator | RowGenerators


def official_top_k(scale: int) -> int:
    """The released sampler ignores its top_k argument: 600 for the first 7 scales, then 300."""
    return 600 if scale < 7 else 300


def cfg_weight(cfg: float, scale: int, num_scales: int) -> float:
    """Guidance weight t of HART's schedule, logits = (1 + t) * cond - t * uncond.

    t grows linearly from 0 at scale 0; the last scale reuses the weight of the one before it (the
    reference never recomputes the ratio there).
    """
    si = min(scale, num_scales - 2)
    return cfg * si / (num_scales - 1)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k set / top-p nucleus to -inf (returns a new tensor)."""
    logits = logits.clone()
    V = logits.shape[-1]
    if top_k > 0 and top_k < V:
        kth = logits.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False  # always keep the most likely token
        logits.masked_fill_(drop.scatter(-1, sorted_idx, drop), -torch.inf)
    return logits


def sample_tokens(
    logits: torch.Tensor,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one code per position from [B, l, V] logits. Returns (indices [B, l], filtered logits).

    top_k == 1 is greedy (argmax, no random draw). A RowGenerators has one generator per row of B.
    """
    B, n, V = logits.shape
    if top_k == 1:
        return logits.argmax(dim=-1), logits
    filtered = filter_logits(logits, top_k, top_p)
    probs = filtered.float().softmax(dim=-1).view(-1, V)
    if isinstance(generator, RowGenerators):
        if len(generator) != B:
            raise ValueError(f"{len(generator)} row generators for {B} rows")
        return generator.multinomial(probs).view(B, n), filtered
    idx = torch.multinomial(probs, 1, generator=generator).view(B, n)
    return idx, filtered


class GuidedSample(NamedTuple):
    indices: torch.Tensor  # [B, l]
    logits: torch.Tensor  # guided logits [B, l, V]
    filtered: torch.Tensor  # the guided logits after top-k / top-p
    weight: float  # the guidance weight of this scale: guided = (1 + weight) * cond - weight * uncond


def guided_sample(
    logits: torch.Tensor,
    scale: int,
    num_scales: int,
    cfg: float,
    top_k: int | None = None,
    top_p: float = 0.0,
    generator: Generator | None = None,
) -> GuidedSample:
    """One scale of next-scale sampling with classifier-free guidance, shared by HART's and the
    unified model's loops. logits [2B, l, V]: the conditional stream, then the unconditional one.
    top_k=None follows the released sampler."""
    B, V = logits.shape[0] // 2, logits.shape[-1]
    weight = cfg_weight(cfg, scale, num_scales)
    guided = (1 + weight) * logits[:B] - weight * logits[B:]
    k = official_top_k(scale) if top_k is None else top_k
    idx, filtered = sample_tokens(guided, min(k, V), top_p, generator)
    return GuidedSample(idx, guided, filtered, weight)


def gumbel_softmax(
    logits: torch.Tensor, tau: float, generator: Generator | None = None
) -> torch.Tensor:
    """Soft Gumbel-softmax with a seeded generator (the "more smooth" path of HART)."""
    if isinstance(generator, RowGenerators):
        u = generator.exponential_like(logits)
    else:
        u = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator)
    return ((logits.float() - u.log()) / tau).softmax(dim=-1)


def smooth_tau(ratio: float) -> float:
    """Gumbel temperature of the "more smooth" path, from MaskGIT: anneals with the scale ratio."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)
