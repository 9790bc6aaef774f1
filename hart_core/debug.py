"""Tiny randomly initialised HART models for tests, demos and benchmarks (audiocraft's `debug` idea).

Everything here is built from configs, offline: a byte-level Hugging Face tokenizer (no training,
no download) and a tiny random Qwen2 as the text encoder.
"""

from __future__ import annotations

import torch

from .pipeline import HARTPipeline
from .text_encoder import TextEncoder
from .tokenizer import HARTTokenizer, TokenizerConfig
from .transformer import OFFICIAL_1024PX_PATCH_NUMS, TransformerConfig


def byte_level_tokenizer():
    """A real `PreTrainedTokenizerFast`: 256 byte tokens + <pad> + <eos>, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<pad>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_qwen2(hidden_size: int = 32, vocab_size: int = 258, seed: int = 0):
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=False,
    )
    return Qwen2Model(cfg)


def debug_configs(
    patch_nums: tuple[int, ...] = (1, 2, 3, 4), depth: int = 2, embed_dim: int = 64, context_token: int = 16,
    context_dim: int = 32, shared_aln: bool = True,
) -> tuple[TokenizerConfig, TransformerConfig]:
    tok = TokenizerConfig(
        vocab_size=96, z_channels=8, ch=32, ch_mult=(1, 2, 1), v_patch_nums=tuple(patch_nums),
    )
    tr = TransformerConfig(
        vocab_size=96, latent_dim=8, embed_dim=embed_dim, depth=depth, num_heads=4, context_token=context_token,
        context_dim=context_dim, patch_nums=tuple(patch_nums), disable_aln=shared_aln, shared_aln=shared_aln,
        use_context_norm=True, diff_width=64, diff_depth=2,
    )
    return tok, tr


def official_configs() -> tuple[TokenizerConfig, TransformerConfig]:
    """The released 1024px model: 14 scales up to 64x64, V=4096, Cvae=32, width 1536, depth 24,
    shared AdaLN, context 300 x 1536 (Qwen2-1.5B), diffusion head 1024 x 6."""
    tok = TokenizerConfig(
        vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), v_patch_nums=OFFICIAL_1024PX_PATCH_NUMS,
    )
    return tok, TransformerConfig()


def debug_pipeline(seed: int = 0, **kwargs) -> HARTPipeline:
    """A tiny random text-to-image pipeline (16x16 images by default). Its pictures are noise: it
    exists to exercise the code path end to end."""
    tok_cfg, tr_cfg = debug_configs(**kwargs)
    from .transformer import HARTTransformer

    torch.manual_seed(seed)
    tokenizer, transformer = HARTTokenizer(tok_cfg).eval(), HARTTransformer(tr_cfg).eval()
    encoder = TextEncoder(tiny_qwen2(tr_cfg.context_dim, seed=seed), byte_level_tokenizer(),
                          max_length=tr_cfg.context_token, system_prompt=None)
    return HARTPipeline(tokenizer, transformer, encoder)


def launch_bound_twin_configs() -> tuple[TokenizerConfig, TransformerConfig]:
    """The released model's depth and scale count at a negligible width: depth 24, 14 scales (grids 1..14),
    width 4, one head, 16 context slots, 8 diffusion steps. Every operation costs about its overhead, so
    wall time and operation counts show what a generation path spends besides math."""
    patch_nums = tuple(range(1, 15))
    tok = TokenizerConfig(vocab_size=64, z_channels=4, ch=32, ch_mult=(1, 1), v_patch_nums=patch_nums)
    tr = TransformerConfig(
        vocab_size=64, latent_dim=4, embed_dim=4, depth=24, num_heads=1, context_token=16, context_dim=4,
        patch_nums=patch_nums, diff_width=8, diff_depth=1, num_sampling_steps="8",
    )
    return tok, tr
