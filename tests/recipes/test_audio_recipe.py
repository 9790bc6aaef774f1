"""The audio recipes through the real trainer: the codec recipe trains, resumes to the same losses and exports a
codec folder; the unified recipe trains on wav shards with that codec (a broken file skipped and counted) and
exports a model that continues, writes and describes audio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from modalities import AudioCodec, load_codec
from recipes.data.tones import ToneWorld

from .test_tones import _wav
from .test_train import run

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 Tone World clips in one shard, the 6th a truncated wav."""
    folder = tmp_path_factory.mktemp("tones")
    world = ToneWorld(seed=0)
    with wds.TarWriter(str(folder / "tones-000.tar"), mtime=0.0) as sink:
        for i in range(16):
            s = world.sample(i)
            data = _wav(s["audio"])
            sink.write({"__key__": s["key"], "wav": data[:400] if i == 5 else data, "txt": s["caption"],
                        "json": json.dumps({"question": s["question"], "answer": s["answer"]})})
    return str(folder / "tones-000.tar")


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory, shards):
    out = tmp_path_factory.mktemp("runs") / "codec"
    run(out, shards, recipe=CONFIGS / "audio_codec_debug.yaml")
    return out


def test_codec_recipe_resumes_to_the_same_losses_and_exports(tmp_path, shards, codec_run):
    ref = losses(codec_run)
    assert len(ref) == 6 and all(map(torch.isfinite, torch.tensor(ref)))
    out = tmp_path / "resumed"
    run(out, shards, recipe=CONFIGS / "audio_codec_debug.yaml", extra=["--stop-after", "4"])
    run(out, shards, recipe=CONFIGS / "audio_codec_debug.yaml", extra=["--resume"])
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(ref), rtol=1e-4, atol=1e-4)
    codec = load_codec(codec_run / "final")
    assert isinstance(codec, AudioCodec) and codec.config.chunk == 1024
    assert codec.encode(torch.from_numpy(ToneWorld(seed=7).sample(0)["audio"])).batch_size == 16


def test_unified_recipe_on_wav_shards(tmp_path, shards, codec_run):
    out = tmp_path / "unified"
    run(out, shards, f"model.codecs.audio.codec={codec_run / 'final'}", recipe=CONFIGS / "audio_debug.yaml")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_samples"] >= 1  # the truncated wav, skipped and counted
    from unified import UnifiedModel

    model = UnifiedModel.from_pretrained(out / "final")
    codec = model.codecs["audio"]
    wave = torch.from_numpy(ToneWorld(seed=3).sample(0)["audio"])
    assert model.continue_audio(wave[: 2 * codec.chunk], 0.2, seed=0).shape == (1, 4 * codec.chunk)
    assert model.generate_audio(["a rising scale on a sine wave, fast"], 0.256, seed=0).shape == (1, 2 * codec.chunk)
    assert isinstance(model.describe([wave], modality="audio", max_new_tokens=8)[0], str)


def test_the_shipped_audio_model_hears_and_continues_tones():
    """The shipped Tone World model: its codec hears the notes of unseen melodies, it names what plays, and its
    continuation is a real one (more right notes than a melody a tone off would get: none)."""
    import numpy as np

    from recipes.cli import DEFAULT_AUDIO_MODEL
    from recipes.eval.tone_judge import judge_continuation, notes_on_grid
    from unified import UnifiedModel

    model = UnifiedModel.from_pretrained(DEFAULT_AUDIO_MODEL)
    codec = model.codecs["audio"]
    assert set(model.codecs) == {"audio"} and codec.sample_rate == 8000 and codec.chunk == 4096
    world = ToneWorld(seed=2024)
    clips = [world.sample(i) for i in range(4)]
    waves = [torch.from_numpy(s["audio"]) for s in clips]
    for s, w in zip(clips, waves, strict=True):
        heard = notes_on_grid(codec.join(codec.decode(codec.encode(w))).numpy(), 8000, s["note_seconds"])
        assert np.mean([h is not None and abs(h - n) < 0.5 for h, n in zip(heard, s["notes"], strict=True)]) >= 0.9
    captions = model.describe(waves, modality="audio", max_new_tokens=24)
    assert sum(c == s["caption"] for c, s in zip(captions, clips, strict=True)) >= 3, captions
    continued = model.continue_audio(torch.stack([w[: 2 * codec.chunk] for w in waves]), 2 * codec.chunk_seconds,
                                     seed=0)
    assert continued.shape == (4, 4 * codec.chunk)
    accuracy = [judge_continuation(a.numpy(), s, 2 * codec.chunk_seconds, 8000)["note_accuracy"]
                for a, s in zip(continued, clips, strict=True)]
    assert np.mean(accuracy) > 0.25, accuracy
