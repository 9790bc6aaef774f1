"""The losses of the items a model writes: per-scale code cross-entropy and the residual diffusion loss,
for every written segment of every item of one modality."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hart_core.quantizer import HybridTokens

from .sequence import ItemLayout

if TYPE_CHECKING:
    from .model import UnifiedModel


def item_losses(model: UnifiedModel, modality: str, layouts: list[ItemLayout], hidden: torch.Tensor,
                generator: torch.Generator | None) -> dict:
    """{"ce", "diffusion", "acc_scale{k}"...}. Without items to learn the same modules run on one
    all-zero stand-in segment and the result is multiplied by zero (see UnifiedModel's forward)."""
    codec, head = model.codecs[modality], model.heads[modality]
    n, C = codec.tokens_per_scale, codec.latent_dim
    L = sum(n)
    present = bool(layouts)
    if present:
        # the hidden states of every written segment's scale groups, [R, L, D], and its codes
        h = torch.stack([hidden[it.row, it.start + it.pattern.segment_start(s) :][:L]
                         for it in layouts for s in range(it.pattern.segments)])
        tokens = HybridTokens.concat([it.item.tokens for it in layouts]).to(hidden.device)
        target = torch.cat(tokens.indices, dim=1)
        residual = tokens.residual
    else:
        h = hidden.new_zeros(1, L, hidden.shape[-1])
        target = torch.zeros(1, L, dtype=torch.long, device=hidden.device)
        residual = None
    logits = head.logits(h, codec.codebook)
    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [R, L]
    if model.config.token_loss_weighting == "scale":
        ce = torch.stack([part.mean() for part in ce.split(list(n), dim=1)])
    out = {"ce": ce.mean() * float(present)}
    if present:
        with torch.no_grad():
            hits = (logits.argmax(-1) == target).float()
            for k, part in enumerate(hits.split(list(n), dim=1)):
                out[f"acc_scale{k}"] = part.mean()
    book = codec.codebook
    gt_last = target[:, -n[-1]:]
    train_residual = residual is not None
    if train_residual and model.config.diffusion_token == "sampled":
        probs = logits[:, -n[-1]:].detach().softmax(-1).flatten(0, 1)
        # diverged logits (NaN/Inf) make the loss non-finite, which the trainer skips; they must not
        # crash the draw first
        probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, torch.ones_like(probs))
        idx = torch.multinomial(probs, 1, generator=generator).view_as(gt_last)
    else:
        idx = gt_last
    code = book[idx]
    z = head.diffusion_condition(h[:, -n[-1]:], code).flatten(0, 1)
    if train_residual:
        target_res = (residual + book[gt_last] - code).flatten(0, 1).to(z.dtype)
        reps = head.config.diffusion_batch_mul
        out["diffusion"] = head.diffusion.loss(target_res.repeat(reps, 1), z.repeat(reps, 1), generator=generator)
    else:  # no residual to learn: run the head without random draws, weight zero
        zeros_t = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        zeros = torch.zeros(z.shape[0], C, device=z.device, dtype=z.dtype)
        out["diffusion"] = head.diffusion.loss(zeros, z, t=zeros_t, noise=zeros) * 0.0
    return out
