"""Audio <-> hybrid tokens: fixed-length chunks, a small 1-D conv encoder/decoder over STFT frames, and
hart_core's multi-scale residual quantizer on a 1-D grid (coarse rates to fine, as SNAC codes audio at several
rates), with the continuous residual on the finest scale.

The networks work at the latent rate (one STFT frame per latent position): the encoder reads each frame's log
magnitude and phase, the decoder writes a log magnitude and a phase per bin and the inverse STFT makes the
waveform (Vocos's back end). Convolutions over raw samples (EnCodec, DAC) are the usual choice but train for
days; this one learns pitch-accurate tones in minutes on a CPU, at about a tenth of the compute per step.

A clip is cut into chunks of `chunk` samples; each chunk is one segment, coded and decoded on its own, so
a chunk's tokens mean the same wherever it stands and a model can write audio chunk after chunk.

    codec = AudioCodec(AudioCodecConfig(sample_rate=8000, chunk=4096))
    tokens = codec.encode(wave)                # mono float [N] (one clip) -> HybridTokens, a row per chunk
    chunks = codec.decode(tokens)              # float [S, chunk] in [-1, 1]
    wave = codec.join(chunks)                  # [S * chunk]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_core.checkpoint import load_checked, read_weights, save_folder
from hart_core.quantizer import HybridTokens, MultiScaleResidualQuantizer

from .base import ModalityCodec, read_codec_config, register_codec, write_codec_config

MODEL_TYPE = "modalities.audio_codec"


@dataclass
class AudioCodecConfig:
    sample_rate: int = 8000
    chunk: int = 4096  # samples per segment
    n_fft: int = 512  # STFT size of the front end and the back end
    hop: int = 128  # samples per latent frame: the latent rate is sample_rate / hop
    width: int = 256  # channels of the frame-rate conv stacks
    dilations: tuple[int, ...] = (1, 2, 4)  # one residual unit per entry, in the encoder and the decoder
    latent_dim: int = 16
    vocab_size: int = 1024
    scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # tokens per scale; the last is chunk / hop
    quant_resi: float = 0.5
    share_quant_resi: int = 4

    def __post_init__(self) -> None:
        self.dilations = tuple(int(d) for d in self.dilations)
        self.scales = tuple(int(s) for s in self.scales)
        if self.chunk % self.hop:
            raise ValueError(f"chunk {self.chunk} is not a multiple of the hop {self.hop}")
        if self.n_fft < self.hop or self.n_fft % 2:
            raise ValueError(f"n_fft must be even and at least the hop, got n_fft={self.n_fft}, hop={self.hop}")
        if self.scales[-1] != self.chunk // self.hop:
            raise ValueError(f"the last scale must have chunk / hop = {self.chunk // self.hop} tokens, "
                             f"got scales {self.scales}")
        if list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must grow strictly, got {self.scales}")

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1


class _ResUnit(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(nn.GELU(), nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation),
                                   nn.GELU(), nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _stack(c: AudioCodecConfig, inputs: int, outputs: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(inputs, c.width, kernel, padding=kernel // 2),
                         *[_ResUnit(c.width, d) for d in c.dilations], nn.GELU(), nn.Conv1d(c.width, outputs, 1))


class AudioEncoder(nn.Module):
    """[B, chunk] -> [B, latent_dim, chunk / hop]: STFT frames (log magnitude and unit phasor) through 1-D convs
    over time."""

    def __init__(self, c: AudioCodecConfig):
        super().__init__()
        self.n_fft, self.hop = c.n_fft, c.hop
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.net = _stack(c, 3 * c.bins, c.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.float(), self.n_fft, self.hop, window=self.window, return_complex=True)[..., :-1]
        mag = spec.abs()
        phasor = spec / mag.clamp_min(1e-6)
        features = torch.cat([torch.log(mag.clamp_min(1e-3)), phasor.real, phasor.imag], dim=1)
        return self.net(features.to(self.net[0].weight.dtype))


class AudioDecoder(nn.Module):
    """[B, latent_dim, chunk / hop] -> [B, chunk]: 1-D convs over time to a log magnitude and a phase per STFT
    bin, then the inverse STFT (as Vocos does), unclamped."""

    def __init__(self, c: AudioCodecConfig):
        super().__init__()
        self.n_fft, self.hop, self.bins, self.chunk = c.n_fft, c.hop, c.bins, c.chunk
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.net = _stack(c, c.latent_dim, 3 * c.bins, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z).float()
        log_mag, re, im = out.split(self.bins, dim=1)
        spec = torch.polar(torch.exp(log_mag.clamp(max=8.0)), torch.atan2(im, re))
        spec = F.pad(spec, (0, 1))  # the centred STFT has one frame more than the latent
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, length=self.chunk)


@register_codec
class AudioCodec(ModalityCodec):
    codec_type = "hart_audio"
    name = "audio"

    def __init__(self, config: AudioCodecConfig):
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config)
        self.decoder = AudioDecoder(config)
        self.quantize = MultiScaleResidualQuantizer(config.vocab_size, config.latent_dim,
                                                    [(s,) for s in config.scales], quant_resi=config.quant_resi,
                                                    share_quant_resi=config.share_quant_resi)

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.quantize

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def chunk(self) -> int:
        return self.config.chunk

    @property
    def chunk_seconds(self) -> float:
        return self.config.chunk / self.config.sample_rate

    def segments_for(self, seconds: float) -> int:
        """Chunks needed to hold `seconds` of audio (at least one)."""
        return max(1, math.ceil(seconds * self.sample_rate / self.chunk - 1e-9))

    # ------------------------------------------------------------------ samples <-> chunks
    def to_chunks(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One mono clip float [N] at the codec's rate -> [S, chunk], the tail zero-padded."""
        wave = torch.as_tensor(wave)
        if wave.dim() != 1 or not wave.is_floating_point() or wave.numel() == 0:
            raise ValueError(f"a clip is mono float samples [N] at {self.sample_rate} Hz, got "
                             f"{wave.dtype} {tuple(wave.shape)} (read files with modalities.read_audio)")
        if not torch.isfinite(wave).all():
            raise ValueError("the clip holds non-finite samples")
        S = math.ceil(wave.numel() / self.chunk)
        wave = F.pad(wave, (0, S * self.chunk - wave.numel()))
        return wave.view(S, self.chunk).to(self.device, self.codebook.dtype)

    def whole_chunks(self, wave: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        """A clip [N] cut to its whole chunks (at most `limit`; at least one: a clip shorter than a chunk is
        kept whole and padded by `to_chunks`): what a model can be given to continue, as it writes whole chunks."""
        whole = max(1, len(wave) // self.chunk)
        return wave[: min(whole, limit or whole) * self.chunk]

    @staticmethod
    def join(chunks: torch.Tensor) -> torch.Tensor:
        """[..., S, chunk] -> [..., S * chunk]."""
        return chunks.flatten(-2)

    # ------------------------------------------------------------------ the networks
    def encode_latent(self, chunks: torch.Tensor) -> torch.Tensor:
        """[S, chunk] -> the continuous latent [S, latent_dim, chunk / hop] (differentiable)."""
        if chunks.dim() != 2 or chunks.shape[-1] != self.chunk:
            raise ValueError(f"chunks must be [S, {self.chunk}], got {tuple(chunks.shape)}")
        return self.encoder(chunks)

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latents [S, latent_dim, L] -> chunks float [S, chunk] in [-1, 1]."""
        return self.decoder(f_hat).clamp(-1, 1).to(f_hat.dtype)

    @torch.no_grad()
    def encode(self, clip: torch.Tensor | np.ndarray) -> HybridTokens:
        """One mono clip [N] -> HybridTokens with one row per chunk."""
        return self.quantize.encode(self.encode_latent(self.to_chunks(clip)))

    @torch.no_grad()
    def encode_items(self, clips: Sequence[torch.Tensor | np.ndarray]) -> list[HybridTokens]:
        """A list of clips (lengths may differ) -> one HybridTokens per clip; all chunks in one batch."""
        if isinstance(clips, (torch.Tensor, np.ndarray)) and clips.ndim == 1:
            clips = [clips]
        chunks = [self.to_chunks(c) for c in clips]
        if not chunks:
            return []
        tokens = self.quantize.encode(self.encode_latent(torch.cat(chunks)))
        return [t.clone() for t in tokens.split([len(c) for c in chunks])]

    def forward(self, chunks: torch.Tensor, continuous: bool = True) -> dict:
        """Training reconstruction of [S, chunk]: "out" [S, chunk], vq_loss, codebook usage, indices."""
        f_hat, vq_loss, usages, indices = self.quantize(self.encode_latent(chunks), continuous)
        return {"out": self.decoder(f_hat), "vq_loss": vq_loss, "usages": usages, "indices": indices}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        config = asdict(self.config)
        save_folder(Path(folder) / "weights", {"model_type": MODEL_TYPE, **config}, self.state_dict())
        write_codec_config(folder, {"codec_type": self.codec_type, "name": self.name, **config})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> AudioCodec:
        config = read_codec_config(folder, cls.codec_type)
        config = {k: v for k, v in config.items() if k not in ("codec_type", "name")}
        try:
            codec = cls(AudioCodecConfig(**config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{folder}: bad audio codec config {json.dumps(config)} ({e})") from e
        load_checked(codec, read_weights(Path(folder) / "weights", prefer_ema=False), str(folder))
        return codec.eval()


def debug_audio_codec(seed: int = 0, sample_rate: int = 8000) -> AudioCodec:
    """A tiny random audio codec (chunks of 1024 samples, 4 scales, V=64) for tests; its tokens mean nothing."""
    config = AudioCodecConfig(sample_rate=sample_rate, chunk=1024, n_fft=256, hop=64, width=32, dilations=(1, 2),
                              latent_dim=8, vocab_size=64, scales=(2, 4, 8, 16))
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        return AudioCodec(config).eval()
