"""Reading and writing audio files.

Files go through torchaudio (the design card's choice) where it imports, and through soundfile
(libsndfile in a wheel: wav, flac, ogg, mp3) otherwise. torchaudio's wheels link one exact torch build
(its CUDA wheels fail to load beside a CPU-only torch), so on many machines soundfile is what runs;
both read into the same float32 [C, N] layout.

    wave, sr = load_audio("in.wav")                          # float32 [C, N] in [-1, 1], the file's rate
    wave = read_audio("in.wav", sample_rate=8000)            # mono [N] at 8 kHz (resampled, averaged)
    save_audio("out.wav", wave, 8000)                        # atomic: a temporary file, then a rename

Anything wrong with a file (missing, not audio, truncated, empty) raises `AudioReadError` with one line
that names the file and the reason.
"""

from __future__ import annotations

import io
import math
import os
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write

BACKENDS = ("torchaudio", "soundfile")  # in order of preference
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


class AudioReadError(ValueError):
    """An audio file that cannot be read; the message names the file and says why."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def available_backends() -> list[str]:
    """The backends that import on this machine, in order of preference."""
    found = []
    try:
        import torchaudio  # noqa: F401

        found.append("torchaudio")
    except Exception:  # noqa: BLE001 - a wheel built for another torch raises OSError, not ImportError
        pass
    try:
        import soundfile  # noqa: F401

        found.append("soundfile")
    except Exception:  # noqa: BLE001 - libsndfile missing is an OSError
        pass
    return found


def _pick(backend: str) -> str:
    found = available_backends()
    if backend == "auto":
        if not found:
            raise RuntimeError("no audio backend: pip install soundfile (or torchaudio built for your torch)")
        return found[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown audio backend {backend!r} (known: {', '.join(BACKENDS)}, auto)")
    if backend not in found:
        raise RuntimeError(f"audio backend {backend!r} does not import here (available: {found or 'none'})")
    return backend


def load_audio(source: str | os.PathLike | bytes, backend: str = "auto", name: str | None = None
               ) -> tuple[torch.Tensor, int]:
    """A file (path or its bytes) -> (float32 [C, N] in [-1, 1], sample rate)."""
    label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioReadError(f"{label}: no such file")
    which = _pick(backend)
    try:
        if which == "torchaudio":
            import torchaudio

            wave, sr = torchaudio.load(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source))
            wave = wave.float()
        else:
            import soundfile

            data, sr = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source),
                                      dtype="float32", always_2d=True)
            wave = torch.from_numpy(np.ascontiguousarray(data.T))
    except Exception as e:  # noqa: BLE001 - each backend raises its own types for a damaged file
        raise AudioReadError(f"{label}: not a readable audio file ({type(e).__name__}: {_first_line(e)})") from e
    if wave.numel() == 0:
        raise AudioReadError(f"{label}: the file holds no samples")
    declared = _declared_wav_frames(source)
    if declared is not None and declared > wave.shape[-1]:  # decoders quietly read what is there
        raise AudioReadError(f"{label}: truncated (the header says {declared} samples, the file holds "
                             f"{wave.shape[-1]})")
    if not torch.isfinite(wave).all():
        raise AudioReadError(f"{label}: the file holds non-finite samples")
    return wave, int(sr)


def _declared_wav_frames(source: str | os.PathLike | bytes) -> int | None:
    """The sample count a PCM WAV header declares (None for other files): libsndfile and FFmpeg read a truncated
    WAV as a shorter one without a word."""
    try:
        if isinstance(source, bytes):
            head = source[:12]
        else:
            with Path(source).open("rb") as f:
                head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source), "rb") as f:
            return f.getnframes()
    except (OSError, EOFError, wave.Error):  # not PCM (float WAV), or a header the decoder judges itself
        return None


def resample(wave: torch.Tensor, orig_rate: int, rate: int) -> torch.Tensor:
    """[..., N] at orig_rate -> [..., N * rate / orig_rate] (band-limited polyphase resampling)."""
    if orig_rate == rate:
        return wave
    if orig_rate <= 0 or rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {rate}")
    try:
        import torchaudio.functional as AF

        return AF.resample(wave, orig_rate, rate)
    except Exception:  # noqa: BLE001 - torchaudio absent or built for another torch
        from scipy.signal import resample_poly

        ratio = Fraction(rate, orig_rate)
        out = resample_poly(wave.double().numpy(), ratio.numerator, ratio.denominator, axis=-1)
        return torch.from_numpy(out).to(wave.dtype)


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """[..., N] cut or zero-padded (at the end) to [..., length]."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def read_audio(source: str | os.PathLike | bytes, sample_rate: int | None = None, seconds: float | None = None,
               backend: str = "auto", name: str | None = None) -> torch.Tensor:
    """A file -> mono float32 [N]: channels averaged, resampled to `sample_rate` (None: the file's rate),
    cut or zero-padded to `seconds` when given."""
    wave, sr = load_audio(source, backend, name)
    wave = wave.mean(0)
    if sample_rate is not None:
        wave = resample(wave, sr, sample_rate)
        sr = sample_rate
    if seconds is not None:
        wave = fit_length(wave, int(round(seconds * sr)))
    return wave.contiguous()


def save_audio(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int,
               backend: str = "auto") -> Path:
    """Write [N] (mono) or [C, N] floats as .wav (16-bit PCM), .flac or .ogg, atomically. Non-finite samples
    are refused; values are clipped to [-1, 1]. Returns the path."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported audio extension (write {', '.join(WRITE_FORMATS)})")
    wave = torch.as_tensor(wave).detach().float().cpu()
    if wave.dim() == 1:
        wave = wave[None]
    if wave.dim() != 2 or wave.shape[-1] == 0:
        raise ValueError(f"audio to save must be [N] or [C, N] with N > 0, got shape {tuple(wave.shape)}")
    if not torch.isfinite(wave).all():
        raise ValueError(f"{path}: refusing to write non-finite audio samples")
    if not math.isfinite(sample_rate) or sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    wave = wave.clamp(-1, 1)
    which = _pick(backend)

    def write(tmp: Path) -> None:
        if which == "torchaudio":
            import torchaudio

            torchaudio.save(os.fspath(tmp), wave, int(sample_rate))
        else:
            import soundfile

            subtype = "PCM_16" if fmt in ("WAV", "FLAC") else None
            soundfile.write(os.fspath(tmp), wave.T.numpy(), int(sample_rate), format=fmt, subtype=subtype)

    return atomic_write(path, write)
