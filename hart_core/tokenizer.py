"""HART's hybrid image tokenizer: conv VAE + multi-scale residual quantizer (official
`HARTAutoEncoder`). Parameter names equal the official `vae.*` keys minus the `vae.` prefix."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_core.checkpoint import (
    build_config,
    check_model_type,
    load_checked,
    official_tokenizer_state,
    read_config,
    read_weights,
    save_folder,
)
from hart_core.quantizer import Grid, HybridTokens, MultiScaleResidualQuantizer
from hart_core.vae import NORMS, Decoder, Encoder


@dataclass
class TokenizerConfig:
    """Field names follow the official tokenizer config.json; defaults are the official ones
    except quantizer_type/hybrid, which default to HART's hybrid tokenizer."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    # ints are square pn x pn grids; (h, w) pairs are accepted too
    v_patch_nums: tuple[int | tuple[int, int], ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quantizer_type: str = "var_hybrid"
    hybrid: bool = True  # informational only (the official model never reads it)
    disable_quant_resi: bool = False  # informational only (its official use is commented out)
    # official: a var_hybrid tokenizer freezes encoder, quant_conv and quantizer at construction
    freeze_codebook_for_hybrid: bool = True
    test_mode: bool = False  # official: eval() and freeze every parameter
    double_decoder: bool = False
    # self-attention in the encoder/decoder (VAR's switches; HART's tokenizers have both). Off: a latent
    # position sees only the convolutions' neighbourhood, so codes stay local (see vae.Encoder)
    using_sa: bool = True
    using_mid_sa: bool = True
    # "group": HART's GroupNorm; "channel": per-position LayerNorm over channels (vae.ChannelNorm), so no
    # statistic is shared across positions either
    norm: str = "group"

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.v_patch_nums = tuple(int(p) if isinstance(p, int) else tuple(int(s) for s in p)
                                  for p in self.v_patch_nums)
        if self.quantizer_type not in ("var_hybrid", "var"):
            raise ValueError(f"quantizer_type={self.quantizer_type!r} is not supported "
                             "(only 'var_hybrid' and 'var')")
        if self.using_znorm:
            raise ValueError("using_znorm=True (cosine-similarity codebook lookup) is not "
                             "supported; HART's tokenizers use the L2 lookup")
        if self.double_decoder:
            raise ValueError("double_decoder=True (second decoder for discrete-only "
                             "reconstructions) is not supported")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {tuple(NORMS)}")
        if any(len(p) != 2 for p in self.v_patch_nums if not isinstance(p, int)):
            raise ValueError(f"v_patch_nums entries must be ints or (h, w): {self.v_patch_nums}")

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        """Build from an official config.json dict; unknown keys (architectures, levels, ...)
        are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["v_patch_nums"] = [p if isinstance(p, int) else list(p) for p in self.v_patch_nums]
        return d

    @property
    def grids(self) -> tuple[Grid, ...]:
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in self.v_patch_nums)


class HARTTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        c = config
        vae_kwargs = dict(ch=c.ch, ch_mult=c.ch_mult, z_channels=c.z_channels,
                          num_res_blocks=c.num_res_blocks, dropout=c.dropout,
                          in_channels=c.in_channels, using_sa=c.using_sa, using_mid_sa=c.using_mid_sa,
                          norm=c.norm)
        self.encoder = Encoder(**vae_kwargs)
        self.decoder = Decoder(**vae_kwargs)
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, c.quant_conv_ks,
                                    padding=c.quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, c.quant_conv_ks,
                                         padding=c.quant_conv_ks // 2)
        self.quantize = MultiScaleResidualQuantizer(
            c.vocab_size, c.z_channels, c.grids, beta=c.beta, quant_resi=c.quant_resi,
            share_quant_resi=c.share_quant_resi, default_qresi_counts=c.default_qresi_counts)
        self.downsample: int = 2 ** (len(c.ch_mult) - 1)

        # Official construction-time freezing: the hybrid stage only fine-tunes the decoder
        # (and post_quant_conv); call requires_grad_(True) to train everything.
        if c.quantizer_type == "var_hybrid" and c.freeze_codebook_for_hybrid:
            for m in (self.encoder, self.quantize, self.quant_conv):
                m.requires_grad_(False)
        if c.test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def grids(self) -> tuple[Grid, ...]:
        return self.quantize.grids

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.grids[-1]
        return h * self.downsample, w * self.downsample

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent f = quant_conv(encoder(images)), images [B, C, H, W] in [-1, 1]."""
        expected = (self.config.in_channels, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            dims = ", ".join(map(str, expected))
            raise ValueError(
                f"images have shape {tuple(images.shape)}, expected [B, {dims}]"
                f" (latent grid {self.grids[-1]} x downsample {self.downsample}); build the "
                "tokenizer with a v_patch_nums ending at H / downsample for other sizes")
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> HybridTokens:
        return self.quantize.encode(self.encode_latent(images))

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def decode(self, tokens: HybridTokens, with_residual: bool = True) -> torch.Tensor:
        """Images in [-1, 1] from tokens (HART inference semantics, see decode_fhat)."""
        return self.decode_latent(self.quantize.decode_fhat(tokens, with_residual))

    def forward(self, images: torch.Tensor, continuous: bool = True) -> dict:
        """Training reconstruction; "out" is NOT clamped (as the official forward)."""
        f_hat, vq_loss, usages, indices = self.quantize(self.encode_latent(images), continuous)
        out = self.decoder(self.post_quant_conv(f_hat))
        return {"out": out, "vq_loss": vq_loss, "usages": usages, "indices": indices}

    def loss(self, images: torch.Tensor, continuous: bool = True,
             recon_weight: float = 1.0) -> dict:
        """Official `compute_loss`: recon_weight * mse(out, images) + vq_loss (no GAN/LPIPS)."""
        res = self(images, continuous)
        recon = F.mse_loss(res["out"], images)
        return {"loss": recon * recon_weight + res["vq_loss"], "recon": recon,
                "vq": res["vq_loss"], "out": res["out"], "usages": res["usages"], "indices": res["indices"]}

    # -- persistence ---------------------------------------------------------------------------

    MODEL_TYPE = "hart_core.tokenizer"

    @classmethod
    def from_official(cls, folder: str | os.PathLike, prefer_ema: bool = True) -> HARTTokenizer:
        """Load a released `tokenizer/` folder (`HARTAutoEncoderWithDisc`: `vae.*` weights plus a
        GAN discriminator, which is ignored)."""
        model = cls(TokenizerConfig.from_dict(read_config(folder)))
        load_checked(model, official_tokenizer_state(read_weights(folder, prefer_ema)), str(folder))
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        save_folder(folder, {"model_type": self.MODEL_TYPE, **self.config.to_dict()}, self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> HARTTokenizer:
        cfg = check_model_type(folder, cls.MODEL_TYPE,
                               "for a released HART tokenizer/ folder use HARTTokenizer.from_official")
        model = cls(build_config(TokenizerConfig.from_dict, cfg, folder))
        load_checked(model, read_weights(folder, prefer_ema=False), str(folder))
        return model.eval()
