"""Spectral distances between waveforms: what the audio codec trains on and what its evaluation reports.

    multi_resolution_stft_loss(pred, target)   # spectral convergence + log-magnitude L1 over several FFT sizes
    complex_stft_loss(pred, target)            # relative error of the complex STFT (magnitude and phase)
    mel_distance(pred, target, sample_rate)    # L1 between log-mel spectrograms, averaged over resolutions
    si_sdr(pred, target)                       # scale-invariant signal-to-distortion ratio, dB per clip

All take [..., N] float waveforms and are differentiable. The mel filterbank is the HTK-scale triangular
bank (torchaudio's `melscale_fbanks` with norm=None); it is built here because torchaudio's wheels only
import beside the exact torch build they were made for.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

DEFAULT_FFT_SIZES = (128, 256, 512, 1024)


def _stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """[..., N] -> complex STFT [..., n_fft // 2 + 1, frames] (hop n_fft / 4, Hann window)."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def _stft_mag(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    return _stft(x, n_fft).abs()


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor,
                               fft_sizes: tuple[int, ...] = DEFAULT_FFT_SIZES, eps: float = 1e-2) -> torch.Tensor:
    """Mean over FFT sizes of spectral convergence (||T| - |P||_F / ||T||_F) plus mean |log|T| - log|P||."""
    total = pred.new_zeros(())
    for n in fft_sizes:
        p, t = _stft_mag(pred, n), _stft_mag(target, n)
        convergence = torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t).clamp_min(eps)
        log_mag = (torch.log(t.clamp_min(eps)) - torch.log(p.clamp_min(eps))).abs().mean()
        total = total + convergence + log_mag
    return total / len(fft_sizes)


def complex_stft_loss(pred: torch.Tensor, target: torch.Tensor, n_fft: int = 512, eps: float = 1e-5) -> torch.Tensor:
    """||S_t - S_p||_F / ||S_t||_F over complex STFTs: unlike magnitudes, it asks for the waveform's phase too."""
    t = _stft(target, n_fft)
    return torch.linalg.vector_norm(t - _stft(pred, n_fft)) / torch.linalg.vector_norm(t).clamp_min(eps)


@functools.lru_cache(maxsize=16)
def _mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int) -> torch.Tensor:
    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(0, float(hz_to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    lower, center, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rise = (freqs[:, None] - lower) / (center - lower)
    fall = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()  # [n_freqs, n_mels]


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int) -> torch.Tensor:
    """Triangular HTK-mel filters [n_freqs, n_mels] from 0 Hz to Nyquist."""
    return _mel_filterbank(int(n_freqs), int(sample_rate), int(n_mels)).clone()


def log_mel(x: torch.Tensor, sample_rate: int, n_fft: int = 512, n_mels: int = 64, eps: float = 1e-2) -> torch.Tensor:
    """[..., N] -> log-mel spectrogram [..., n_mels, frames]."""
    mag = _stft_mag(x, n_fft)
    bank = _mel_filterbank(n_fft // 2 + 1, int(sample_rate), n_mels).to(mag.device, mag.dtype)
    return torch.log(torch.einsum("...fn,fm->...mn", mag, bank).clamp_min(eps))


def mel_distance(pred: torch.Tensor, target: torch.Tensor, sample_rate: int,
                 fft_sizes: tuple[int, ...] = (256, 512, 1024), n_mels: int = 64) -> torch.Tensor:
    """Mean L1 distance between log-mel spectrograms over several FFT sizes (lower is closer)."""
    dists = [F.l1_loss(log_mel(pred, sample_rate, n, min(n_mels, n // 4)),
                       log_mel(target, sample_rate, n, min(n_mels, n // 4))) for n in fft_sizes]
    return torch.stack(dists).mean()


def si_sdr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per clip, [..., N] -> [...] (higher is better; silence targets give -inf-ish)."""
    pred = pred - pred.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    scale = (pred * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps)
    projection = scale * target
    noise = pred - projection
    return 10 * torch.log10(projection.pow(2).sum(-1).clamp_min(eps) / noise.pow(2).sum(-1).clamp_min(eps))
