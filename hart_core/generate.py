"""Text-to-image generation with HART: next-scale sampling with a KV cache and batched CFG, then the
residual diffusion head at the last scale, then the VQ-VAE decoder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sampling import guided_sample, gumbel_softmax, smooth_tau
from .tokenizer import HARTTokenizer
from .transformer import HARTTransformer

NoiseFn = Callable[[tuple], torch.Tensor]
# callback(scale, num_scales, preview) with preview = image decoded from the latent so far, [B,3,H,W] in [0,1]
PreviewFn = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationTrace:
    """Intermediate values of one generation, recorded on request (parity checks, debugging)."""

    logits: list[torch.Tensor]  # guided logits per scale [B, n_k, V]
    indices: list[torch.Tensor]  # sampled codes per scale [B, n_k]
    guidance: list[float]  # CFG weight t per scale
    diffusion_condition: torch.Tensor | None = None  # [2B * n_last, C] ([cond rows; uncond rows])
    diffusion_output: torch.Tensor | None = None  # residual sampled by the head, all rows
    f_hat: torch.Tensor | None = None  # final latent handed to the decoder


def unconditional_context(context: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
    """Batch the conditional stream with HART's unconditional one: zero context, positions 0, and a
    mask that keeps only the first slot (so masked means stay finite)."""
    u_mask = torch.zeros_like(mask)
    u_mask[:, 0] = True
    return (
        torch.cat((context, torch.zeros_like(context))),
        torch.cat((mask, u_mask)),
        torch.cat((positions, torch.zeros_like(positions))),
    )


@torch.no_grad()
def generate_latent(
    transformer: HARTTransformer,
    tokenizer: HARTTokenizer,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    context_positions: torch.Tensor | None = None,
    *,
    cfg: float = 4.5,
    top_k: int | None = None,
    top_p: float = 0.0,
    more_smooth: bool = False,
    use_residual: bool = True,
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: PreviewFn | None = None,
    trace: GenerationTrace | None = None,
) -> torch.Tensor:
    """Sample the latent f_hat [B, Cvae, h, w] for a batch of text contexts [B, T, context_dim].

    top_k=None follows the released sampler (600 for the first 7 scales, then 300); top_k=1 is greedy.
    `noise_fn(shape)` replaces the diffusion head's Gaussian draws (used to replay reference noise).
    """
    c = transformer.config
    B, K = context.shape[0], len(c.patch_nums)
    mask = context_mask.bool()
    if context_positions is None:
        context_positions = mask.long().cumsum(1) - 1
    dtype = transformer.word_embed.weight.dtype
    cond = transformer.condition(*unconditional_context(context.to(dtype), mask, context_positions))
    codebook = tokenizer.quantize.embedding.weight
    pn_last = c.patch_nums[-1]
    f_hat = context.new_zeros(B, c.latent_dim, pn_last, pn_last, dtype=torch.float32)
    cache = transformer.new_cache()
    x = None
    for si, pn in enumerate(c.patch_nums):
        hidden = transformer.step(cond, si, x, cache)
        if si == 0:
            hidden = hidden[:, -1:]  # scale 0 is predicted from the last context slot
        idx, logits, filtered, t = guided_sample(transformer.logits(hidden, cond), si, K, cfg, top_k, top_p,
                                                 generator)
        if trace is not None:
            trace.logits.append(logits)
            trace.indices.append(idx)
            trace.guidance.append(t)
        if more_smooth:
            ratio = min(si, K - 2) / (K - 1)
            soft = gumbel_softmax(filtered * (1 + ratio), smooth_tau(ratio), generator)
            codes = soft @ codebook.float()
        else:
            codes = codebook[idx].float()  # [B, n, Cvae]
        if si < K - 1:
            h = codes.transpose(1, 2).reshape(B, c.latent_dim, pn, pn)
            f_hat, x = tokenizer.quantize.next_scale_input(si, f_hat, h)
            x = x.repeat(2, 1, 1)  # both CFG streams see the same image so far
            if callback is not None:
                callback(si, K, _to_unit(tokenizer.decode_latent(f_hat)))
            continue
        if use_residual:
            hard = codebook[idx]
            z = transformer.diffusion_condition(hidden, torch.cat((hard, hard))).flatten(0, 1)
            residual = transformer.diffusion_head.sample(
                z.float(), cfg=t, generator=generator, noise_fn=noise_fn
            )
            if trace is not None:
                trace.diffusion_condition, trace.diffusion_output = z, residual
            codes = codes + residual[: B * pn * pn].view(B, pn * pn, -1)
        h = codes.transpose(1, 2).reshape(B, c.latent_dim, pn, pn)
        f_hat, _ = tokenizer.quantize.next_scale_input(si, f_hat, h)
    if trace is not None:
        trace.f_hat = f_hat
    if callback is not None:
        callback(K - 1, K, _to_unit(tokenizer.decode_latent(f_hat)))
    return f_hat


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.add(1).mul(0.5)


@torch.no_grad()
def generate_images(
    transformer: HARTTransformer,
    tokenizer: HARTTokenizer,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    context_positions: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1]; keyword arguments as in `generate_latent`."""
    f_hat = generate_latent(transformer, tokenizer, context, context_mask, context_positions, **kwargs)
    return _to_unit(tokenizer.decode_latent(f_hat))
