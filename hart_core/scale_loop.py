"""The one next-scale sampling loop: HART's own pipeline and the unified model both write a ladder of
scales through `sample_scales`.

At scale k the model reads the downsampled latent so far and returns hidden states for the scale's
cells, for the conditional stream and the unconditional one stacked ([2B, n_k, D]); the guided logits
(HART's scale-dependent CFG weight) are sampled with top-k / top-p, or the scale's codes are given (a
prefix); the codes are added to the latent f_hat, and at the last scale the residual diffusion head
adds the continuous part the codebook cannot express. Grids may be 2-D of any shape or 1-D.

What is model-specific comes in as three functions, so the loop knows no transformer, no backbone
and no sequence layout:

    step(scale, x)                 -> hidden [2B, n, D]; x: input tokens [2B, n, C] (None at scale 0)
    logits(hidden)                 -> [2B, n, V]
    residual(hidden, codes, guidance) -> [2B * n, C]; codes: the sampled codes' latents for both
                                      streams, guidance: the CFG weight of the last scale
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .quantizer import Grid, MultiScaleResidualQuantizer
from .sampling import Generator, guided_sample, gumbel_softmax, smooth_tau

StepFn = Callable[[int, torch.Tensor | None], torch.Tensor]
LogitsFn = Callable[[torch.Tensor], torch.Tensor]
ResidualFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# on_scale(scale, f_hat): the latent after each scale, for previews; nothing is decoded unless asked
ScaleFn = Callable[[int, torch.Tensor], None]


@dataclass
class ScaleSampling:
    """How codes are drawn. top_k=None follows HART's released schedule (600, then 300 from scale 7);
    top_k=1 is greedy. cfg is the guidance scale of HART's schedule (weight 0 at scale 0, growing)."""

    cfg: float = 4.5
    top_k: int | None = None
    top_p: float = 0.0
    more_smooth: bool = False  # HART's Gumbel-softmax codes instead of hard ones
    use_residual: bool = True  # add the diffusion head's residual at the last scale


@dataclass
class ScaleTrace:
    """Intermediate values of one ladder, recorded on request (parity checks, debugging)."""

    logits: list[torch.Tensor] = field(default_factory=list)  # guided logits per scale [B, n_k, V]
    indices: list[torch.Tensor] = field(default_factory=list)  # sampled codes per scale [B, n_k]
    guidance: list[float] = field(default_factory=list)  # CFG weight per scale
    f_hat: torch.Tensor | None = None  # the final latent


def sample_scales(
    quantizer: MultiScaleResidualQuantizer,
    grids: Sequence[Grid],
    batch_size: int,
    step: StepFn,
    logits: LogitsFn,
    residual: ResidualFn,
    sampling: ScaleSampling,
    *,
    prefix: Sequence[torch.Tensor] = (),
    generator: Generator | None = None,
    on_scale: ScaleFn | None = None,
    trace: ScaleTrace | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Write one ladder of scales for B items. Returns (f_hat [B, C, *G] in fp32, codes per scale [B, n_k]).

    prefix: codes of the first scales (Long [B, n_k] each) used instead of drawn ones; they are drawn
    anyway, so the random stream of the later scales does not depend on how many are given.
    generator: one torch.Generator, or a RowGenerators (one per item: each item draws what it would alone).
    """
    grids = tuple(tuple(g) for g in grids)
    K, B = len(grids), batch_size
    if len(prefix) > K:
        raise ValueError(f"prefix has {len(prefix)} scales but the ladder has {K}")
    codebook = quantizer.embedding.weight
    C = codebook.shape[1]
    f_hat = torch.zeros(B, C, *grids[-1], dtype=torch.float32, device=codebook.device)
    indices: list[torch.Tensor] = []
    x = None
    for si, grid in enumerate(grids):
        hidden = step(si, x)
        idx, guided, filtered, guidance = guided_sample(logits(hidden), si, K, sampling.cfg, sampling.top_k,
                                                 sampling.top_p, generator)
        if si < len(prefix):
            idx = prefix[si].to(idx.device, torch.long)
        indices.append(idx)
        if trace is not None:
            trace.logits.append(guided)
            trace.indices.append(idx)
            trace.guidance.append(guidance)
        if sampling.more_smooth:
            ratio = min(si, K - 2) / (K - 1)
            codes = gumbel_softmax(filtered * (1 + ratio), smooth_tau(ratio), generator) @ codebook.float()
        else:
            codes = codebook[idx].float()  # [B, n, C]
        if si == K - 1 and sampling.use_residual:
            hard = codebook[idx]
            n = idx.shape[1]
            codes = codes + residual(hidden, torch.cat((hard, hard)), guidance)[: B * n].view(B, n, -1)
        f_hat, x = quantizer.next_scale_input(si, f_hat, codes.transpose(1, 2).reshape(B, C, *grid), grids)
        if si < K - 1:
            x = x.repeat(2, 1, 1)  # both CFG streams see the same latent so far
        if on_scale is not None:
            on_scale(si, f_hat)
    if trace is not None:
        trace.f_hat = f_hat
    return f_hat, indices
