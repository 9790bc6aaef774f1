"""Audio on the unified backbone: continuation, text-to-audio and audio captioning through the generic item
machinery (no audio-specific backbone code), with the real audio codec."""

from __future__ import annotations

import pytest
import torch

from modalities import debug_audio_codec
from unified.debug import debug_model

SR = 8000


@pytest.fixture(scope="module")
def model():
    return debug_model({"audio": debug_audio_codec()})


def tone(hz: float, samples: int) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * hz * torch.arange(samples) / SR)


def test_continuation_gives_whole_chunks_then_writes(model):
    codec = model.codecs["audio"]
    wave = tone(440, 2 * codec.chunk + 300)  # two whole chunks and a tail, which is dropped
    out = model.continue_audio(wave, seconds=0.2, seed=0)
    new_chunks = codec.segments_for(0.2)
    assert out.shape == (1, (2 + new_chunks) * codec.chunk)
    given = codec.join(codec.decode(codec.encode(wave[: 2 * codec.chunk])))
    assert torch.allclose(out[0, : 2 * codec.chunk], given, atol=1e-5)  # the given chunks, as the codec hears them
    again = model.continue_audio(wave, seconds=0.2, seed=0)
    other = model.continue_audio(wave, seconds=0.2, seed=1)
    assert out.equal(again) and not out.equal(other)


def test_cached_equals_uncached_continuation(model):
    wave = tone(330, 2 * model.codecs["audio"].chunk)
    cached = model.continue_audio(wave, seconds=0.25, seed=3)
    uncached = model.continue_audio(wave, seconds=0.25, seed=3, use_cache=False)
    assert torch.allclose(cached, uncached, atol=1e-5)


def test_text_to_audio_and_captions(model):
    codec = model.codecs["audio"]
    out = model.generate_audio(["a rising tone", "a falling tone"], seconds=0.3, seed=0)
    assert out.shape == (2, codec.segments_for(0.3) * codec.chunk) and out.abs().max() <= 1
    texts = model.describe([tone(440, 3000), tone(660, 1000)], modality="audio", max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_bad_continuation_requests(model):
    with pytest.raises(ValueError, match="seconds"):
        model.continue_audio(tone(440, 2048), seconds=0)
    with pytest.raises(ValueError, match="same number of whole chunks"):
        model.continue_audio([tone(440, 2048), tone(440, 1024)], seconds=0.2)
