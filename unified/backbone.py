"""The shared backbone: any Hugging Face decoder LM (Qwen2 by default, Llama works too) driven through
`inputs_embeds`, an explicit 4-D attention mask and multi-axis (t, h, w) positions.

The LM's 1-D rotary embedding is swapped for a multi-axis one in the style of Qwen2-VL's M-RoPE: each
rotary frequency rotates by one of t, h, w (interleaved, as in Qwen3-VL). Text tokens
sit at (p, p, p), where every section rotates by p, which is exactly the LM's original RoPE, so a
pretrained LLM reads text as before. Positions may be fractional (scale grids are stretched to the
final grid).
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.nn as nn


def interleaved_axes(num_freqs: int) -> torch.Tensor:
    """Axis (0 = t, 1 = h, 2 = w) of each rotary frequency, interleaved t, h, w, t, h, w, ...

    Interleaving (as Qwen3-VL does) gives every axis high and low frequencies; contiguous sections
    (Qwen2-VL) leave the last axis only the slowest ones, which a small model cannot resolve across
    the few cells of a coarse scale.
    """
    return torch.arange(num_freqs) % 3


class MultiAxisRotaryEmbedding(nn.Module):
    """Drop-in for an HF `rotary_emb`: forward(x, position_ids) -> (cos, sin), [B, L, head_dim].

    position_ids: [B, L, 3] (t, h, w), float allowed; [B, L] is read as (p, p, p).
    """

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float().clone(), persistent=False)
        self.register_buffer("axis", interleaved_axes(inv_freq.numel()), persistent=False)
        self.attention_scaling = attention_scaling
        self._inv_freq_fp32 = self.inv_freq.detach().clone()  # not a buffer: .to() leaves it fp32

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the frequencies (0.3162 -> 0.3164), so a bf16 model would
        # rotate differently from the fp32 one it was trained or exported as: they stay fp32
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32 and not self._inv_freq_fp32.is_meta:
            self.inv_freq = self._inv_freq_fp32.to(self.inv_freq.device)
        return self

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        pos = position_ids.float()
        if pos.dim() == 2:
            pos = pos.unsqueeze(-1).expand(*pos.shape, 3)
        per_freq = pos[..., self.axis.to(pos.device)]  # [B, L, head_dim/2]: each frequency's own axis
        freqs = per_freq * self.inv_freq.to(pos.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


class Backbone(nn.Module):
    """Wraps an `AutoModelForCausalLM`. `forward` returns final hidden states (after the LM's norm);
    `lm_head` turns them into text logits."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        decoder = lm.get_decoder()
        rotary = decoder.rotary_emb
        decoder.rotary_emb = MultiAxisRotaryEmbedding(rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0)))
        params = inspect.signature(decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config) -> Backbone:
        """A randomly initialised LM from a transformers config (object or dict with model_type)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        if isinstance(config, dict):
            config = dict(config)
            config = AutoConfig.for_model(config.pop("model_type"), **config)
        config._attn_implementation = "sdpa"  # our masks are 4-D booleans
        return cls(AutoModelForCausalLM.from_config(config, trust_remote_code=False))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Backbone:
        """A local pretrained LLM folder (never downloads)."""
        from transformers import AutoModelForCausalLM

        if not os.path.isdir(path):
            raise FileNotFoundError(f"LLM folder {path} does not exist")
        # never the code a folder's auto_map names (transformers would otherwise ask, or run it)
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                  attn_implementation="sdpa", dtype=dtype)
        return cls(lm)

    @property
    def config(self):
        return self.lm.config

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def resize_vocab(self, vocab_size: int) -> None:
        if vocab_size != self.embed_tokens.num_embeddings:
            self.lm.resize_token_embeddings(vocab_size)

    def new_cache(self, capacity: int | None = None):
        """A KV cache that grows (`DynamicCache`), or with `capacity` one allocated once for that many
        positions (`StaticCache`: fixed shapes and addresses, what torch.compile and CUDA graphs need;
        the mask must then cover all `capacity` keys, see `DecodingSession`)."""
        from transformers import DynamicCache, StaticCache

        if capacity is None:
            return DynamicCache(config=self.lm.config)
        return StaticCache(config=self.lm.config, max_cache_len=capacity)

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache=None,
    ) -> torch.Tensor:
        """embeds [B, L, D]; positions [B, L, 3]; mask [B, L, K] bool (True = may attend), K = cached +
        L keys. With `cache` (from `new_cache`), keys/values are appended to it."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.lm.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask[:, None], position_ids=positions, **kwargs
        )
        return out.last_hidden_state
