"""HART's next-scale text-to-image transformer.

Sequence: [T text-context slots | scale 1 | ... | scale K-1]. Scale 0 has no slot of its own: it is
predicted from the last context slot. Scale k's input is the VAR/HART embedding of the cumulative
latent after scales < k, area-downsampled to scale k's grid. Within a scale all tokens attend to each
other; across scales attention is causal (block-causal mask in training, a KV cache at inference).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import (
    build_config,
    check_model_type,
    load_checked,
    official_transformer_state,
    read_config,
    read_weights,
    save_folder,
)
from .diffusion import ResidualDiffusionHead
from .layers import AdaLNBeforeHead, AdaLNBlock, KVCache, RMSNorm, rope_1d, rope_2d, scale_coords

OFFICIAL_1024PX_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


@dataclass
class TransformerConfig:
    vocab_size: int = 4096  # codebook size V of the tokenizer
    latent_dim: int = 32  # Cvae, channels of the tokenizer latent
    embed_dim: int = 1536
    depth: int = 24
    num_heads: int = 24
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    context_token: int = 300  # T: text slots (padded)
    context_dim: int = 1536  # width of the text encoder's hidden states
    patch_nums: tuple[int, ...] = OFFICIAL_1024PX_PATCH_NUMS
    attn_l2_norm: bool = True
    sep_aln_pooling_mode: str = "max"
    use_context_norm: bool = True
    disable_aln: bool = True
    shared_aln: bool = True
    diff_width: int = 1024
    diff_depth: int = 6
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    cond_drop_rate: float = 0.1
    rope_theta: float = 10000.0

    # official config.json fields this implementation does not support, with the value it requires
    _REQUIRED = {
        "attn_type": "llama",
        "mlp_type": "llama",
        "use_cross_attn": False,
        "use_timestep_embed": False,
        "diffusion_head_repeats": 1,
        "sampler": "iddpm",
    }

    def __post_init__(self):
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError("head_dim must be a multiple of 4 for HART's 2-D RoPE")
        if len(self.patch_nums) < 2:
            raise ValueError("patch_nums needs at least two scales")

    @property
    def num_image_tokens(self) -> int:  # L
        return sum(p * p for p in self.patch_nums)

    @property
    def seq_len(self) -> int:  # T + L - 1
        return self.context_token + self.num_image_tokens - 1

    @classmethod
    def from_official(cls, llm_config: dict, tokenizer_config: dict) -> TransformerConfig:
        """Build from the released `llm/config.json` and `tokenizer/config.json` dicts."""
        for key, value in cls._REQUIRED.items():
            if key in llm_config and llm_config[key] != value:
                raise ValueError(f"unsupported HART option {key}={llm_config[key]!r} (only {value!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in llm_config.items() if k in names}
        kwargs["vocab_size"] = tokenizer_config["vocab_size"]
        kwargs["latent_dim"] = tokenizer_config["z_channels"]
        kwargs["num_sampling_steps"] = str(llm_config.get("num_sampling_steps", "8"))
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"model_type"}
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Conditioning:
    """Everything derived from the text context once per generation (or training step)."""

    tokens: torch.Tensor  # [B, T, C] embedded context, also the first T inputs
    mask: torch.Tensor  # [B, T] bool
    positions: torch.Tensor  # [B, T] long, 1-D RoPE positions of the context slots
    block_mods: list = field(default_factory=list)  # per block [B, 6, C] or None
    head_mod: torch.Tensor | None = None  # [B, 2, C]

    @property
    def image_offset(self) -> torch.Tensor:
        # image coordinates are offset by the LAST context column (n_valid - 1 with right padding)
        return self.positions[:, -1]


class HARTTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        C = c.embed_dim
        self.word_embed = nn.Linear(c.latent_dim, C)
        self.context_embed = nn.Linear(c.context_dim, C)
        self.context_norm = RMSNorm(c.context_dim, c.norm_eps) if c.use_context_norm else nn.Identity()
        self.lvl_embed = nn.Embedding(len(c.patch_nums), C)
        self.blocks = nn.ModuleList(
            AdaLNBlock(
                C, c.num_heads, c.mlp_ratio, c.norm_eps, c.attn_l2_norm,
                c.disable_aln, c.shared_aln, c.sep_aln_pooling_mode,
            )
            for _ in range(c.depth)
        )
        self.head_nm = AdaLNBeforeHead(C, c.norm_eps)
        self.head = nn.Linear(C, c.vocab_size)
        self.decoder_norm = RMSNorm(C, c.norm_eps)
        self.diffusion_head = ResidualDiffusionHead(
            target_channels=c.latent_dim, z_channels=C, width=c.diff_width, depth=c.diff_depth,
            num_sampling_steps=c.num_sampling_steps,
        )

    @property
    def head_dim(self) -> int:
        return self.config.embed_dim // self.config.num_heads

    # -- conditioning ------------------------------------------------------------------------

    def condition(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        context_positions: torch.Tensor | None = None,
    ) -> Conditioning:
        """Embed the text context [B, T, context_dim] and precompute every AdaLN modulation."""
        c = self.config
        if context.dim() != 3 or context.shape[1:] != (c.context_token, c.context_dim):
            raise ValueError(
                f"context must be [B, {c.context_token}, {c.context_dim}], got {tuple(context.shape)}"
            )
        mask = context_mask.bool()
        if context_positions is None:
            context_positions = mask.long().cumsum(1) - 1
        tokens = self.context_embed(self.context_norm(context))
        return Conditioning(
            tokens=tokens,
            mask=mask,
            positions=context_positions,
            block_mods=[b.modulation(tokens, mask) for b in self.blocks],
            head_mod=self.head_nm.modulation(tokens),
        )

    def image_rope(self, cond: Conditioning, scale: int):
        """cos/sin for the tokens of one scale (scale >= 1)."""
        pn, pn_last = self.config.patch_nums[scale], self.config.patch_nums[-1]
        coords = scale_coords(pn, pn_last, cond.tokens.device)
        coords = coords[None] + cond.image_offset[:, None, None]
        return rope_2d(coords, self.head_dim, self.config.rope_theta)

    def context_rope(self, cond: Conditioning):
        return rope_1d(cond.positions, self.head_dim, self.config.rope_theta)

    # -- teacher-forced forward (training, parity) ---------------------------------------------

    def levels(self, device=None) -> torch.Tensor:
        """Scale index of every position of the teacher-forced sequence (0 for the context)."""
        c = self.config
        sizes = torch.tensor([c.context_token] + [p * p for p in c.patch_nums[1:]], device=device)
        return torch.repeat_interleave(torch.arange(len(c.patch_nums), device=device), sizes)

    def block_causal_mask(self, device=None) -> torch.Tensor:
        """Bool [T+L-1, T+L-1]: True where a query may attend (key level <= query level)."""
        lv = self.levels(device)
        return lv[:, None] >= lv[None, :]

    def forward(
        self,
        cond: Conditioning,
        next_scale_inputs: torch.Tensor,
        return_hidden: bool = False,
    ):
        """Teacher-forced pass.

        next_scale_inputs: [B, L - 1, latent_dim], the quantizer's teacher-forcing input for scales 1..K-1.
        Returns logits [B, L, V] (row 0 = the last context slot predicting scale 0) and, when asked,
        the final hidden states [B, T + L - 1, C].
        """
        c = self.config
        expected = (c.num_image_tokens - 1, c.latent_dim)
        if next_scale_inputs.shape[1:] != expected:
            raise ValueError(f"next_scale_inputs must be [B, {expected[0]}, {expected[1]}], "
                             f"got {tuple(next_scale_inputs.shape)}")
        x = torch.cat((cond.tokens, self.word_embed(next_scale_inputs.to(cond.tokens.dtype))), dim=1)
        x = x + self.lvl_embed(self.levels(x.device))
        cos_c, sin_c = self.context_rope(cond)
        ropes = [self.image_rope(cond, k) for k in range(1, len(c.patch_nums))]
        cos = torch.cat([cos_c] + [r[0] for r in ropes], dim=1)
        sin = torch.cat([sin_c] + [r[1] for r in ropes], dim=1)
        mask = self.block_causal_mask(x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, cond.block_mods[i], cos, sin, attn_mask=mask)
        logits = self.logits(x[:, c.context_token - 1 :], cond)
        return (logits, x) if return_hidden else logits

    def logits(self, hidden: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.head(self.head_nm(hidden, cond.head_mod)).float()

    def diffusion_condition(self, hidden_last: torch.Tensor, code_embeddings: torch.Tensor) -> torch.Tensor:
        """z = decoder_norm(h + word_embed(e(idx))) for the residual diffusion head."""
        return self.decoder_norm(hidden_last + self.word_embed(code_embeddings.to(hidden_last.dtype)))

    # -- KV-cached inference -------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.blocks))

    def step_inputs(self, cond: Conditioning, scale: int, x: torch.Tensor | None) -> torch.Tensor:
        """The first hidden states of a scale: the context slots at scale 0, else word_embed(x); plus its level."""
        if scale == 0:
            return cond.tokens + self.lvl_embed.weight[0]
        return self.word_embed(x.to(cond.tokens.dtype)) + self.lvl_embed.weight[scale]

    def step(self, cond: Conditioning, scale: int, x: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """Run one scale through the blocks with the KV cache; returns hidden states of its tokens.

        scale 0 feeds the T context slots (x ignored); scale k >= 1 feeds x = [B, n_k, latent_dim],
        the downsampled cumulative latent. No mask is needed: a scale sees itself and the cache.
        """
        h = self.step_inputs(cond, scale, x)
        cos, sin = self.context_rope(cond) if scale == 0 else self.image_rope(cond, scale)
        for i, block in enumerate(self.blocks):
            h = block(h, cond.block_mods[i], cos, sin, cache=cache, block=i)
        return h

    # -- training loss -------------------------------------------------------------------------

    def loss(
        self,
        cond: Conditioning,
        indices: list[torch.Tensor],
        next_scale_inputs: torch.Tensor,
        residual_before_last: torch.Tensor,
        codebook: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        diffusion_token: str = "sampled",
        ce_weight: float = 1.0,
        diffusion_weight: float = 1.0,
    ) -> dict:
        """Cross-entropy over every scale's codes plus the residual diffusion loss at the last scale.

        residual_before_last: [B, n_last, latent_dim], the latent minus the discrete reconstruction of
        scales < K-1 (the tokenizer's residual + e(idx_last)). The diffusion target is that minus the
        embedding of the last-scale code: the code the model itself sampled ("sampled", as HART
        trains) or the ground-truth one ("ground_truth").
        """
        c = self.config
        logits, hidden = self.forward(cond, next_scale_inputs, return_hidden=True)
        target = torch.cat(indices, dim=1)
        ce_tokens = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B, L]
        n_last = c.patch_nums[-1] ** 2
        last_logits = logits[:, -n_last:].detach()
        if diffusion_token == "sampled":
            probs = last_logits.softmax(-1).flatten(0, 1)
            last_idx = torch.multinomial(probs, 1, generator=generator).view(-1, n_last)
        elif diffusion_token == "ground_truth":
            last_idx = indices[-1]
        else:
            raise ValueError("diffusion_token must be 'sampled' or 'ground_truth'")
        code_emb = F.embedding(last_idx, codebook)
        z = self.diffusion_condition(hidden[:, -n_last:], code_emb)
        diff_target = (residual_before_last - code_emb).flatten(0, 1)
        reps = c.diffusion_batch_mul
        diff = self.diffusion_head.loss(
            diff_target.repeat(reps, 1), z.flatten(0, 1).repeat(reps, 1), generator=generator
        )
        ce = ce_tokens.mean()
        metrics = {"loss": ce_weight * ce + diffusion_weight * diff, "ce": ce, "diffusion": diff}
        start = 0
        with torch.no_grad():
            for k, p in enumerate(c.patch_nums):
                sl = slice(start, start + p * p)
                metrics[f"ce_scale{k}"] = ce_tokens[:, sl].mean()
                metrics[f"acc_scale{k}"] = (logits[:, sl].argmax(-1) == target[:, sl]).float().mean()
                start += p * p
        return metrics

    # -- persistence ---------------------------------------------------------------------------

    MODEL_TYPE = "hart_core.transformer"

    @classmethod
    def from_official(
        cls,
        llm_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike | None = None,
        prefer_ema: bool = True,
    ) -> HARTTransformer:
        """Load a released `llm/` folder (config.json + safetensors / .bin / ema_model.bin).

        The codebook size and latent width come from the tokenizer's config.json, by default the
        sibling `tokenizer/` folder, as in the release.
        """
        llm_dir = Path(llm_dir)
        tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else llm_dir.parent / "tokenizer"
        config = TransformerConfig.from_official(read_config(llm_dir), read_config(tokenizer_dir))
        model = cls(config)
        load_checked(model, official_transformer_state(read_weights(llm_dir, prefer_ema)), str(llm_dir))
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        save_folder(folder, {"model_type": self.MODEL_TYPE, **self.config.to_dict()}, self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> HARTTransformer:
        cfg = check_model_type(folder, cls.MODEL_TYPE,
                               "for a released HART llm/ folder use HARTTransformer.from_official")
        model = cls(build_config(TransformerConfig.from_dict, cfg, folder))
        load_checked(model, read_weights(folder, prefer_ema=False), str(folder))
        return model.eval()
