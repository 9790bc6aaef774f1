"""Text-to-image generation with HART: next-scale sampling with a KV cache and batched CFG, then the
residual diffusion head at the last scale, then the VQ-VAE decoder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .fast_generate import FastPath
from .scale_loop import ScaleSampling, ScaleTrace, sample_scales
from .tokenizer import HARTTokenizer
from .transformer import HARTTransformer

NoiseFn = Callable[[tuple], torch.Tensor]
# callback(scale, num_scales, preview) with preview = image decoded from the latent so far, [B,3,H,W] in [0,1]
PreviewFn = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationTrace(ScaleTrace):
    """`ScaleTrace` plus the diffusion head's input and output at the last scale."""

    diffusion_condition: torch.Tensor | None = None  # [2B * n_last, C] ([cond rows; uncond rows])
    diffusion_output: torch.Tensor | None = None  # residual sampled by the head, all rows


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
    fast: FastPath | None = None,
) -> torch.Tensor:
    """Sample the latent f_hat [B, Cvae, h, w] for a batch of text contexts [B, T, context_dim].

    top_k=None follows the released sampler (600 for the first 7 scales, then 300); top_k=1 is greedy.
    `noise_fn(shape)` replaces the diffusion head's Gaussian draws (used to replay reference noise).
    `fast`: run the scale steps and the diffusion sampler through a `FastPath` (same draws, same sampling
    loop; the math agrees with the eager path within fp32 rounding, see fast_blocks.py).
    """
    c = transformer.config
    mask = context_mask.bool()
    if context_positions is None:
        context_positions = mask.long().cumsum(1) - 1
    dtype = transformer.word_embed.weight.dtype
    cond = transformer.condition(*unconditional_context(context.to(dtype), mask, context_positions))
    if fast is None:
        cache = transformer.new_cache()

        def run(si: int, x: torch.Tensor | None) -> torch.Tensor:
            return transformer.step(cond, si, x, cache)

        sample_residual = transformer.diffusion_head.sample
    else:
        run, sample_residual = fast.start(cond), fast.diffusion.sample

    def step(si: int, x: torch.Tensor | None) -> torch.Tensor:
        hidden = run(si, x)
        return hidden[:, -1:] if si == 0 else hidden  # scale 0 is predicted from the last context slot

    def residual(hidden: torch.Tensor, codes: torch.Tensor, guidance: float) -> torch.Tensor:
        z = transformer.diffusion_condition(hidden, codes).flatten(0, 1)
        out = sample_residual(z.float(), cfg=guidance, generator=generator, noise_fn=noise_fn)
        if trace is not None:
            trace.diffusion_condition, trace.diffusion_output = z, out
        return out

    on_scale = None
    if callback is not None:
        decode = latent_decoder(tokenizer, fast)

        def on_scale(si: int, f_hat: torch.Tensor) -> None:
            callback(si, len(c.patch_nums), _to_unit(decode(f_hat)))

    f_hat, _ = sample_scales(
        tokenizer.quantize, [(pn, pn) for pn in c.patch_nums], context.shape[0], step,
        lambda hidden: transformer.logits(hidden, cond), residual,
        ScaleSampling(cfg, top_k, top_p, more_smooth, use_residual),
        generator=generator, on_scale=on_scale, trace=trace,
    )
    return f_hat


def latent_decoder(tokenizer: HARTTokenizer, fast: FastPath | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """latent -> images in [-1, 1]: the tokenizer's reference decode, or the fast path's copy of it."""
    return tokenizer.decode_latent if fast is None else fast.decoder(tokenizer)


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
    """Images [B, 3, H, W] in [0, 1]; keyword arguments as in `generate_latent` (with `fast`, the latent is
    decoded by the fast path's `FastDecoder` too)."""
    f_hat = generate_latent(transformer, tokenizer, context, context_mask, context_positions, **kwargs)
    return _to_unit(latent_decoder(tokenizer, kwargs.get("fast"))(f_hat))
