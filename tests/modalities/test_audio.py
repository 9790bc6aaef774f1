"""Audio I/O (torchaudio where it imports, soundfile otherwise), the audio codec and the spectral metrics."""

from __future__ import annotations

import pytest
import torch

from modalities import load_codec
from modalities.audio import AudioCodec, AudioCodecConfig, debug_audio_codec
from modalities.audio_io import AudioReadError, available_backends, load_audio, read_audio, resample, save_audio
from modalities.audio_metrics import (
    complex_stft_loss,
    log_mel,
    mel_distance,
    mel_filterbank,
    multi_resolution_stft_loss,
    si_sdr,
)

SR = 8000


def tone(hz: float, seconds: float = 0.5, sr: int = SR, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return amp * torch.sin(2 * torch.pi * hz * t)


def peak_hz(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    return float(torch.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


BACKENDS = [b for b in ("soundfile", "torchaudio")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_save_load_round_trip(tmp_path, backend, suffix):
    if backend not in available_backends():
        pytest.skip(f"{backend} does not import here (torchaudio's wheels need their own torch build)")
    stereo = torch.stack([tone(440), tone(660)])
    path = save_audio(tmp_path / f"a{suffix}", stereo, SR, backend=backend)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    wave, sr = load_audio(path, backend=backend)
    assert sr == SR and wave.shape == stereo.shape and wave.dtype == torch.float32
    assert (wave - stereo).abs().max() < 2 / 32768  # 16-bit PCM
    mono = read_audio(path.read_bytes(), backend=backend)
    assert torch.allclose(mono, wave.mean(0))


def test_read_audio_resamples_and_fits_length(tmp_path):
    save_audio(tmp_path / "a.wav", tone(500, seconds=0.5, sr=16000), 16000)
    wave = read_audio(tmp_path / "a.wav", sample_rate=SR, seconds=1.0)
    assert wave.shape == (SR,)
    assert abs(peak_hz(wave[: SR // 2], SR) - 500) < 4  # same pitch at the new rate
    assert wave[SR // 2 + 100 :].abs().max() < 1e-6  # zero-padded after the file's half second
    assert read_audio(tmp_path / "a.wav", sample_rate=SR, seconds=0.25).shape == (SR // 4,)
    assert resample(tone(300), SR, SR).equal(tone(300))


def test_bad_files_get_one_clear_error(tmp_path):
    save_audio(tmp_path / "good.wav", tone(440), SR)
    data = (tmp_path / "good.wav").read_bytes()
    cases = {"missing.wav": None, "text.wav": b"this is not audio", "empty.wav": b"", "truncated.wav": data[:30]}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioReadError) as err:
            load_audio(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_save_refuses_non_finite_and_bad_suffix(tmp_path):
    bad = tone(440)
    bad[10] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_audio(tmp_path / "a.wav", bad, SR)
    with pytest.raises(ValueError, match="extension"):
        save_audio(tmp_path / "a.mp4", tone(440), SR)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- metrics

def test_metrics_on_known_signals():
    a, b = tone(440), tone(880)
    assert float(multi_resolution_stft_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(mel_distance(a, a, SR)) == pytest.approx(0.0, abs=1e-6)
    assert float(mel_distance(a, b, SR)) > 1.0
    assert float(si_sdr(a, a)) > 60 and float(si_sdr(0.3 * a, a)) > 60  # scale-invariant
    noisy = a + 0.05 * torch.randn(len(a), generator=torch.Generator().manual_seed(0))
    assert 15 < float(si_sdr(noisy, a)) < 25  # 0.5 amplitude vs 0.05 noise: ~17 dB
    mel = log_mel(a, SR, 512, 64)
    band = mel.mean(-1).argmax()  # the 440 Hz tone lights the band whose filter peaks nearest 440 Hz
    bank = mel_filterbank(257, SR, 64)
    assert abs(float(torch.linspace(0, SR / 2, 257)[bank[:, band].argmax()]) - 440) < 40


def test_mel_filterbank_matches_torchaudio():
    try:
        import torchaudio.functional as AF
    except Exception:  # noqa: BLE001
        pytest.skip("torchaudio does not import beside this torch build")
    ours = mel_filterbank(257, SR, 40)
    theirs = AF.melscale_fbanks(257, 0.0, SR / 2, 40, SR, norm=None, mel_scale="htk")
    assert torch.allclose(ours, theirs, atol=1e-5)


# ---------------------------------------------------------------------- codec

def test_codec_shapes_and_items():
    codec = debug_audio_codec()
    wave = tone(440, seconds=0.3)  # 2400 samples: 3 chunks of 1024, the last zero-padded
    tokens = codec.encode(wave)
    assert tokens.batch_size == 3 and tokens.grids == ((2,), (4,), (8,), (16,))
    assert tokens.residual.shape == (3, 16, 8)
    out = codec.decode(tokens)
    assert out.shape == (3, 1024) and out.abs().max() <= 1
    assert codec.join(out).shape == (3072,)
    items = codec.encode_items([wave, tone(300, seconds=0.1)])
    assert [t.batch_size for t in items] == [3, 1]
    assert all(a.equal(b) for a, b in zip(items[0].indices, tokens.indices, strict=True))
    assert codec.segments_for(0.3) == 3 and codec.segments_for(1024 / SR) == 1


def test_codec_refuses_what_it_cannot_code():
    codec = debug_audio_codec()
    for bad in (torch.zeros(2, 1000), torch.zeros(1000, dtype=torch.int16), torch.zeros(0)):
        with pytest.raises(ValueError, match="mono float"):
            codec.encode(bad)
    with pytest.raises(ValueError, match="multiple of the hop"):
        AudioCodecConfig(chunk=1000, hop=128)
    with pytest.raises(ValueError, match="last scale"):
        AudioCodecConfig(chunk=4096, hop=128, scales=(1, 2, 4))


def test_codec_save_load_round_trip(tmp_path):
    codec = debug_audio_codec(seed=3)
    codec.save_pretrained(tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    assert isinstance(loaded, AudioCodec) and loaded.config == codec.config
    wave = tone(523, seconds=0.2)
    a, b = codec.encode(wave), loaded.encode(wave)
    assert all(x.equal(y) for x, y in zip(a.indices, b.indices, strict=True)) and a.residual.equal(b.residual)


def test_hybrid_path_reconstructs_better_than_discrete_only():
    """HART's claim on audio, on a tiny codec trained for a few seconds: codes + residual beat codes alone."""
    from recipes.data.tones import ToneWorld

    world = ToneWorld(seed=1)
    clips = torch.stack([torch.from_numpy(world.sample(i)["audio"][:4096]) for i in range(8)])
    torch.manual_seed(0)
    codec = AudioCodec(AudioCodecConfig(chunk=1024, n_fft=256, hop=64, width=32, dilations=(1, 2), latent_dim=8,
                                        vocab_size=32, scales=(2, 4, 8, 16))).train()
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    chunks = clips.reshape(-1, 1024)
    for step in range(60):
        out = codec(chunks, continuous=step % 2 == 0)
        loss = (multi_resolution_stft_loss(out["out"], chunks) + mel_distance(out["out"], chunks, SR)
                + complex_stft_loss(out["out"], chunks, 256) + out["vq_loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    codec.eval()
    tokens = codec.quantize.encode(codec.encode_latent(chunks).detach())
    with torch.no_grad():
        hybrid, discrete = codec.decode(tokens), codec.decode(tokens, with_residual=False)
    # spectral distances: a codec this small (60 steps) has not learnt the waveform's phase, so SI-SDR is ~-30 dB
    # either way and its sign is noise (it flips with the thread count); the trained codec's SI-SDR is in README
    assert float(mel_distance(hybrid, chunks, SR)) < float(mel_distance(discrete, chunks, SR))
    assert float(multi_resolution_stft_loss(hybrid, chunks)) < float(multi_resolution_stft_loss(discrete, chunks))
