"""HART: hybrid autoregressive transformer (Tang et al., 2024), checkpoint-compatible with the
released weights.

- `HARTTokenizer`: VQ-VAE + multi-scale residual quantizer with a continuous residual.
- `HARTTransformer`: next-scale text-to-image transformer with its residual diffusion head.
- `HARTPipeline`: prompts -> images; `generate_latent` / `generate_images` for tensors.
"""

from .checkpoint import CheckpointError
from .diffusion import GaussianDiffusion, ResidualDiffusionHead
from .generate import GenerationTrace, generate_images, generate_latent
from .pipeline import HARTPipeline
from .quantizer import HybridTokens, MultiScaleResidualQuantizer
from .text_encoder import TextEncoder
from .tokenizer import HARTTokenizer, TokenizerConfig
from .transformer import HARTTransformer, TransformerConfig

__all__ = [
    "CheckpointError",
    "GaussianDiffusion",
    "GenerationTrace",
    "HARTPipeline",
    "HARTTokenizer",
    "HARTTransformer",
    "HybridTokens",
    "MultiScaleResidualQuantizer",
    "ResidualDiffusionHead",
    "TextEncoder",
    "TokenizerConfig",
    "TransformerConfig",
    "generate_images",
    "generate_latent",
]
