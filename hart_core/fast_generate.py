"""`FastPath`: HART generation at the cost of its math, for `generate_latent(..., fast=FastPath(...))`.

Three parts, each a drop-in for one piece of the eager path:
  * `FastBlocks` (fast_blocks.py) for the transformer's scale steps: a static KV cache, per-generation
    tables, fused ops; optionally compiled per scale step;
  * `FastDiffusion` for the residual head's sampler: every step's schedule coefficients looked up once as
    numbers (the eager sampler gathers 8 tables per step), the condition projected once instead of at
    every step. Its arithmetic is the eager sampler's, op for
    op, so in fp32 it reproduces it bit for bit (tested); with `compile=True` each step is compiled;
  * `FastDecoder` for the VQ-VAE decode of the finished latent: the decoder's weights in channels_last
    (what cuDNN's and oneDNN's fastest convolutions read), optionally in bf16 and compiled.

The sampling loop, top-k, CFG and the quantizer are shared with the eager path (`sample_scales`), so the
random stream is the same: with the same generator the fast path draws what the eager path draws.
"""

from __future__ import annotations

import copy
import weakref

import torch

from .diffusion import POSTERIOR_TABLES, NoiseFn, ResidualDiffusionHead, posterior
from .fast_blocks import FastBlocks
from .tokenizer import HARTTokenizer
from .transformer import Conditioning, HARTTransformer

Tensor = torch.Tensor

PATHS = ("eager", "fast", "compiled")  # the generation paths: the reference, FastPath, FastPath compiled


class FastDiffusion:
    """The residual head's ancestral sampler with per-step constants hoisted out of the loop."""

    def __init__(self, head: ResidualDiffusionHead, *, compile: bool = False):
        self.head, self.compiled = head, compile
        self._tables: dict[tuple, list[dict[str, float | Tensor]]] = {}
        self._denoise = self._denoise_step
        if compile:
            device = next(head.parameters()).device
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._denoise = torch.compile(self._denoise_step, mode=mode, dynamic=False)

    def _coefficients(self, dtype: torch.dtype, device: torch.device) -> list[dict[str, float | Tensor]]:
        """Per respaced step, the schedule entries rounded to `dtype` (as the eager sampler's gathers): numbers,
        or 0-dim tensors on `device` when compiled. Kept until the head is respaced."""
        diffusion = self.head.gen_diffusion
        key = (id(diffusion), dtype, device)
        if key not in self._tables:
            rows = [diffusion._names[name] for name in POSTERIOR_TABLES]
            table = diffusion._tables[rows].to(dtype)
            table = table.to(device).unbind(1) if self.compiled else table.T.tolist()
            self._tables = {key: [dict(zip(POSTERIOR_TABLES, column, strict=True)) for column in table]}
        return self._tables[key]

    @torch.no_grad()
    def sample(self, z: Tensor, *, cfg: float = 1.0, temperature: float = 1.0,
               generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None) -> Tensor:
        """As `ResidualDiffusionHead.sample` (same draws, same quirks of the official CFG)."""
        head, net = self.head, self.head.net
        if noise_fn is None:
            def noise_fn(shape: tuple[int, ...]) -> Tensor:
                return torch.randn(shape, generator=generator, device=z.device, dtype=z.dtype)

        rows, channels = z.shape[0], head.in_channels
        guided = cfg != 1.0
        if guided:
            half = noise_fn((rows // 2, channels))
            x = torch.cat([half, half])
        else:
            x = noise_fn((rows, channels))
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError("the fast diffusion sampler runs in fp32 (as HARTPipeline keeps the head)")
        cond = net.cond_embed(z)
        diffusion = head.gen_diffusion
        coefficients = self._coefficients(x.dtype, x.device)
        timesteps = diffusion.timestep_map.to(z.device)
        scalars = {"cfg": cfg if guided else None, "temperature": temperature}
        if self.compiled:  # numbers would be baked into the graph: one compilation per value
            scalars = {k: None if v is None else torch.tensor(v, dtype=x.dtype, device=x.device)
                       for k, v in scalars.items()}
        for k in reversed(range(diffusion.num_timesteps)):
            noise = noise_fn(tuple(x.shape)) if k > 0 else None
            y = net.time_embed(timesteps[k].expand(rows)) + cond
            x = self._denoise(x, y, noise, coefficients[k], **scalars)
        return x * head.vae_scale

    def _denoise_step(self, x: Tensor, y: Tensor, noise: Tensor | None, c: dict[str, float | Tensor],
                      cfg: float | Tensor | None, temperature: float | Tensor) -> Tensor:
        """One reverse step: the denoiser (with the official CFG), then the iDDPM posterior sample."""
        net = self.head.net
        out = net.denoise(x, y) if cfg is None else net.guide(net.denoise(net.halves(x), y), cfg)
        mean, log_variance, _ = posterior(out, x, c)
        if noise is None:  # the last step is noiseless
            return mean
        return mean + torch.exp(0.5 * log_variance) * noise * temperature


class FastDecoder:
    """A tokenizer's `decode_latent` (post_quant_conv, decoder, clamp to [-1, 1]) for generated latents.

    It decodes with a copy of the tokenizer's decode weights, taken once, in channels_last memory format,
    cast to `dtype` if given (None: the tokenizer's own, fp32 in `HARTPipeline`) and compiled if asked. The
    tokenizer itself is not touched, so its `decode_latent` stays the reference: fp32 channels_last
    convolutions sum in another order, which moves pixels by ~1e-5 (tested; per fixture by
    `python -m hart_core.parity FIXTURE --path fast`). Being a copy, it does not follow later changes to
    the tokenizer's weights: make a new one (or a new `FastPath`) after loading others.
    """

    def __init__(self, tokenizer: HARTTokenizer, *, dtype: torch.dtype | None = None, compile: bool = False):
        weight = tokenizer.post_quant_conv.weight
        self.source = (weight.device, weight.dtype)  # where and in what the tokenizer's weights were copied
        self.dtype = dtype or weight.dtype
        parts = torch.nn.Sequential(copy.deepcopy(tokenizer.post_quant_conv), copy.deepcopy(tokenizer.decoder))
        self.net = parts.to(self.dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
        self._decode = self.net
        if compile:
            self._decode = torch.compile(self.net, dynamic=False)

    @torch.no_grad()
    def __call__(self, f_hat: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] (contiguous, f_hat's dtype) from a latent [B, Cvae, h, w]."""
        x = f_hat.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self._decode(x).to(f_hat.dtype).contiguous().clamp(-1, 1)


def fast_path(transformer: HARTTransformer, path: str, decode_dtype: torch.dtype | None = None) -> FastPath | None:
    """The `fast=` argument of `generate_latent` for a path name: None for "eager" (which decodes with the
    tokenizer itself, in fp32, so a decode dtype is refused), else a `FastPath` (compiled for "compiled")."""
    if path not in PATHS:
        raise ValueError(f"unknown generation path {path!r} (expected {', '.join(PATHS)})")
    if path == "eager":
        if decode_dtype not in (None, torch.float32):
            raise ValueError("the eager path decodes with the tokenizer itself, in fp32; a decode dtype needs "
                             "the fast or compiled path")
        return None
    return FastPath(transformer, compile=path == "compiled", decode_dtype=decode_dtype)


class FastPath:
    """The fast generation path of one transformer: `FastBlocks` per row count (allocated on first use,
    kept for later generations), one `FastDiffusion`, and a `FastDecoder` per tokenizer it decodes for
    (`decoder(tokenizer)`; `decode_dtype`: its precision, None = the tokenizer's).

    compile=True compiles every scale step, diffusion step and the decoder once per shape (CUDA: the
    steps captured as CUDA graphs). On a CPU that costs minutes of compilation for a large model and gains
    little: use it on accelerators, or to count what a captured graph launches.
    """

    def __init__(self, transformer: HARTTransformer, *, compile: bool = False,
                 decode_dtype: torch.dtype | None = None):
        self.transformer, self.compile, self.decode_dtype = transformer, compile, decode_dtype
        self.diffusion = FastDiffusion(transformer.diffusion_head, compile=compile)
        self._blocks: dict[tuple, FastBlocks] = {}
        self._decoders: weakref.WeakKeyDictionary[HARTTokenizer, FastDecoder] = weakref.WeakKeyDictionary()

    def decoder(self, tokenizer: HARTTokenizer) -> FastDecoder:
        """The `FastDecoder` of this tokenizer (made on first use; again if the tokenizer was moved or cast)."""
        made, weight = self._decoders.get(tokenizer), tokenizer.post_quant_conv.weight
        if made is None or made.source != (weight.device, weight.dtype):
            made = self._decoders[tokenizer] = FastDecoder(tokenizer, dtype=self.decode_dtype, compile=self.compile)
        return made

    def blocks(self, rows: int) -> FastBlocks:
        weight = self.transformer.word_embed.weight
        key = (rows, weight.device, weight.dtype)  # a model moved or cast after a generation gets new caches
        if key not in self._blocks:
            self._blocks[key] = FastBlocks(self.transformer, rows, compile=self.compile)
        return self._blocks[key]

    def start(self, cond: Conditioning):
        """A step function (scale, inputs) -> hidden states over a fresh sequence for this condition."""
        blocks = self.blocks(cond.tokens.shape[0])
        if self.compile and blocks.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new generation: earlier replays' outputs are done
        blocks.prepare(cond)

        def step(scale: int, x: Tensor | None) -> Tensor:
            return blocks.step(scale, self.transformer.step_inputs(cond, scale, x))

        return step

    def release(self) -> None:
        """Free the KV caches and decoder copies (they are made again on the next generation)."""
        self._blocks.clear()
        self._decoders.clear()
