"""Convolutional encoder/decoder of HART's tokenizer (the VQGAN/SD "vq-f16" layout used by VAR).

Module and attribute names mirror the official checkpoint (`encoder.down.{i}.block.{j}.conv1`, ...)
so the released `vae.encoder.*` / `vae.decoder.*` weights load with strict=True.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position: unlike GroupNorm it takes no statistics across positions,
    so content in one place cannot rescale the features of another (an empty scene's near-zero variance would
    otherwise be blown up, and a far object change every code)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


# "group": HART's GroupNorm(32) (statistics over channels and positions); "channel": ChannelNorm
NORMS = {"group": _group_norm, "channel": ChannelNorm}


def _norm(channels: int, kind: str = "group") -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm={kind!r}: expected one of {tuple(NORMS)}")
    return NORMS[kind](channels)


def _conv3x3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0, norm: str = "group"):
        super().__init__()
        self.norm1 = _norm(c_in, norm)
        self.conv1 = _conv3x3(c_in, c_out)
        self.norm2 = _norm(c_out, norm)
        # the official block only instantiates Dropout above 1e-6; Identity keeps the same keys
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = _conv3x3(c_out, c_out)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (only used at the lowest resolution)."""

    def __init__(self, channels: int, norm: str = "group"):
        super().__init__()
        self.norm = _norm(channels, norm)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)
        # one head of width C, softmax(q k^T * C^-0.5) v: exactly what SDPA computes with this scale
        h = F.scaled_dot_product_attention(q, k, v, scale=C**-0.5)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3x3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # asymmetric right/bottom padding (taming-transformers convention), not padding=1
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ResnetBlocks, each followed by an AttnBlock when `attn` is non-empty."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, attention: bool = True, norm: str = "group"):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm)
        self.attn_1 = AttnBlock(channels, norm) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, norm)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """images [B, in_channels, H, W] -> latent [B, z_channels, H/2^(L-1), W/2^(L-1)].

    `using_sa` / `using_mid_sa` (VAR's names; the official HART tokenizer has both) add self-attention at the
    lowest resolution / in the middle block. Without them, and with `norm="channel"` (no GroupNorm statistics
    across positions), a latent position sees only its convolutions' receptive field."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], z_channels: int,
                 num_res_blocks: int = 2, dropout: float = 0.0, in_channels: int = 3,
                 using_sa: bool = True, using_mid_sa: bool = True, norm: str = "group"):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = _conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        c_in = ch
        for i, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout, norm)
                      for j in range(num_res_blocks)]
            attns = [AttnBlock(c_out, norm) for _ in range(num_res_blocks)] if i == n - 1 and using_sa else []
            level = Level(blocks, attns)
            if i != n - 1:
                level.downsample = Downsample(c_out)
            self.down.append(level)
            c_in = c_out
        self.mid = Mid(c_in, dropout, using_mid_sa, norm)
        self.norm_out = _norm(c_in, norm)
        self.conv_out = _conv3x3(c_in, z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """latent [B, z_channels, h, w] -> images [B, in_channels, h*2^(L-1), w*2^(L-1)] (unclamped).
    `using_sa` / `using_mid_sa` as for the Encoder."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], z_channels: int,
                 num_res_blocks: int = 2, dropout: float = 0.0, in_channels: int = 3,
                 using_sa: bool = True, using_mid_sa: bool = True, norm: str = "group"):
        super().__init__()
        n = len(ch_mult)
        c_in = ch * ch_mult[-1]
        self.conv_in = _conv3x3(z_channels, c_in)
        self.mid = Mid(c_in, dropout, using_mid_sa, norm)
        # `up[i]` is the level at resolution i (0 = full size) but levels run from n-1 down to 0,
        # so we build them coarse-to-fine and store them by resolution index like the checkpoint
        levels: list[Level] = []
        for i in reversed(range(n)):
            c_out = ch * ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, dropout, norm)
                      for j in range(num_res_blocks + 1)]
            attns = [AttnBlock(c_out, norm) for _ in range(num_res_blocks + 1)] if i == n - 1 and using_sa else []
            level = Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_out)
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, norm)
        self.conv_out = _conv3x3(c_in, in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
