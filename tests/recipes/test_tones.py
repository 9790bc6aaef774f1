"""The Tone World, its judge (validated on clean melodies), and audio in the training data path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch

from recipes.data import decode_sample
from recipes.data.decode import BadSample
from recipes.data.tones import (
    HELDOUT_PAIRS,
    PATTERNS,
    TEMPOS,
    TIMBRES,
    ToneWorld,
    caption,
    note_sequence,
    parse_caption,
)
from recipes.eval.tone_judge import describe_clip, detect_pitch, hz_to_midi, judge_continuation, notes_on_grid

SR = 8000


def test_world_is_deterministic_and_splits_pairs():
    a, b = ToneWorld(seed=3), ToneWorld(seed=3)
    assert np.array_equal(a.sample(5)["audio"], b.sample(5)["audio"])
    assert not np.array_equal(a.sample(5)["audio"], a.sample(6)["audio"])
    train = [a.melody(i, "train") for i in range(300)]
    heldout = [a.melody(i, "heldout") for i in range(60)]
    assert not any((m["timbre"], m["pattern"]) in HELDOUT_PAIRS for m in train)
    assert all((m["timbre"], m["pattern"]) in HELDOUT_PAIRS for m in heldout)
    assert {m["tempo"] for m in train} == set(TEMPOS) and {m["timbre"] for m in train} == set(TIMBRES)
    s = a.sample(0)
    assert s["audio"].dtype == np.float32 and len(s["audio"]) == round(2.048 * SR)
    assert abs(np.abs(s["audio"]).max() - s["peak"]) < 1e-6 and 0.35 <= s["peak"] <= 0.75
    # clips start anywhere in their pattern's cycle, at any level: 4,200 distinct training melodies, not the
    # 1,050 of (pairs x tempos x base notes, x intervals for alternating notes)
    assert {m["phase"] for m in train if m["pattern"] == "rising"} == set(range(8))
    distinct = {(m["timbre"], m["tempo"], tuple(m["notes"])) for m in (a.melody(i) for i in range(3000))}
    assert len(distinct) > 2000
    assert parse_caption(s["caption"]) == {k: s[k] for k in ("timbre", "pattern", "tempo")}
    with pytest.raises(ValueError):
        parse_caption("a red circle in the top left")


def test_note_sequences():
    assert note_sequence("rising", 60, 9) == [60, 62, 64, 65, 67, 69, 71, 72, 60]
    assert note_sequence("rising", 60, 4, phase=6) == [71, 72, 60, 62]
    assert note_sequence("alternating", 50, 3, interval=5, phase=1) == [55, 50, 55]
    assert note_sequence("falling", 60, 3) == [72, 71, 69]
    assert note_sequence("arpeggio", 50, 5) == [50, 54, 57, 62, 50]
    assert note_sequence("alternating", 50, 4, interval=7) == [50, 57, 50, 57]


@pytest.mark.parametrize("timbre", list(TIMBRES))
def test_pitch_detector_on_clean_tones(timbre):
    from recipes.data.tones import synthesize_note

    for note in range(48, 85, 3):
        wave = synthesize_note(timbre, note, 0.128)
        hz = detect_pitch(wave[200:900], SR)
        assert hz is not None and abs(hz_to_midi(hz) - note) < 0.2, (timbre, note, hz)
    assert detect_pitch(np.zeros(800), SR) is None


def test_judge_hears_every_clean_clip_right():
    world = ToneWorld(seed=11)
    for split in ("train", "heldout"):
        for i in range(24):
            s = world.sample(i, split)
            heard = describe_clip(s["audio"], SR)
            assert {k: heard[k] for k in ("tempo", "pattern", "timbre")} == \
                {k: s[k] for k in ("tempo", "pattern", "timbre")}, s["caption"]
            assert all(abs(h - n) < 0.3 for h, n in zip(heard["notes"], s["notes"], strict=True))


def test_continuation_judge_scores_truth_and_a_wrong_continuation():
    world = ToneWorld(seed=2)
    s = next(world.sample(i) for i in range(50) if world.melody(i)["tempo"] == "fast")
    truth = judge_continuation(s["audio"], s, 1.024, SR)
    assert truth["note_accuracy"] == 1.0 and truth["notes"] == 8 and truth["onset_error_ms"] < 20
    # the same melody a tone higher after 1.024 s: every continued note wrong
    from recipes.data.tones import render

    shifted = render(s["timbre"], [n + 2 for n in s["notes"]], s["note_seconds"])
    wrong = np.concatenate([s["audio"][: 8192], shifted[8192:]])
    assert judge_continuation(wrong, s, 1.024, SR)["note_accuracy"] == 0.0
    assert notes_on_grid(np.zeros(8192), SR, 0.128) == [None] * 8


def _wav(wave: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_audio_decodes_as_training_reads_it():
    s = ToneWorld().sample(1)
    raw = {"__key__": "k", "wav": _wav(s["audio"]), "txt": s["caption"]}
    out = decode_sample(raw, 16, modalities=["audio"], sample_rate=SR, audio_seconds=1.0)
    assert out["audio"].shape == (SR,) and out["audio"].dtype == torch.float32
    assert np.abs(out["audio"].numpy() - s["audio"][:SR]).max() < 1e-4
    resampled = decode_sample(raw, 16, modalities=["audio"], sample_rate=16000)
    assert resampled["audio"].shape == (2 * len(s["audio"]),)
    assert resampled["digests"]["audio"] != out["digests"]["audio"]  # the token cache sees other settings
    for bad in (b"", b"RIFF....WAVEfmt garbage", _wav(s["audio"])[:40]):
        with pytest.raises(BadSample, match="k.wav"):
            decode_sample({**raw, "wav": bad}, 16, modalities=["audio"], sample_rate=SR)


def test_shards_round_trip(tmp_path):
    from recipes.data import open_source

    pattern = ToneWorld(seed=4).write_shards(tmp_path, "heldout", n=3)
    source = open_source(pattern)
    samples = [decode_sample(source.raw(i), 16, modalities=["audio"], sample_rate=SR) for i in range(len(source))]
    assert len(samples) == 3
    for s in samples:
        truth = ToneWorld(seed=4).sample(int(s["key"].rsplit("-", 1)[1]), "heldout")
        assert s["caption"] == caption(truth["timbre"], truth["pattern"], truth["tempo"])
        assert np.abs(s["audio"].numpy() - truth["audio"]).max() < 1e-4
    assert set(PATTERNS) >= {truth["pattern"]}


def test_selected_clips_match_and_keep_their_world_indices(tmp_path):
    from recipes.data import open_source
    from recipes.data.shapes import VALIDATION_START

    world = ToneWorld(seed=0)
    picked = world.select("train", n=6, start=100, patterns=("rising", "falling"), tempos=("slow",))
    assert len(picked) == 6 and picked == sorted(picked) and picked[0] >= 100
    for i in picked:
        m = world.melody(i, "train")
        assert m["pattern"] in ("rising", "falling") and m["tempo"] == "slow"
    skipped = [i for i in range(100, picked[-1]) if i not in picked]
    assert all(world.melody(i)["pattern"] not in ("rising", "falling") or world.melody(i)["tempo"] != "slow"
               for i in skipped)
    with pytest.raises(ValueError, match="unknown pattern"):
        world.select(patterns=("spiral",))
    with pytest.raises(ValueError, match="only 0 of 1"):  # never reaches the evaluation's clips
        world.select(n=1, start=VALIDATION_START)

    pattern = world.write_shards(tmp_path, "train", indices=picked[:2], prefix="slow")
    assert pattern.endswith("slow-{000..000}.tar")
    source = open_source(pattern)
    keys = sorted(source.raw(j)["__key__"] for j in range(len(source)))
    assert keys == [f"tones-train-{i:07d}" for i in picked[:2]]


def test_continuation_ceiling_finds_the_melodies_that_begin_alike():
    from recipes.data.tones import continuation_ceiling

    # a fast clip's first second holds a whole cycle of every pattern: its continuation is certain
    assert all(v == pytest.approx(1.0) for v in continuation_ceiling("fast", 1.024).values())
    slow = continuation_ceiling("slow", 1.024)
    assert slow["arpeggio"] == pytest.approx(1.0) and slow["alternating"] == pytest.approx(1.0)
    # 4 slow notes from a scale's root sound like its upper half (same steps); the two go on an octave apart:
    # ambiguous when the first note fits both (18 of 25 base notes), for 2 of 8 phases, half of them guessed wrong
    assert slow["rising"] == pytest.approx(1 - 2 / 8 * 18 / 25 / 2)
    assert slow["falling"] == pytest.approx(slow["rising"])
    assert continuation_ceiling("slow", 0.256)["rising"] < slow["rising"]  # one note tells less than four
    with pytest.raises(ValueError, match="holds 0 of the 8 notes"):
        continuation_ceiling("slow", 0.1)
    with pytest.raises(ValueError, match="unknown tempo"):
        continuation_ceiling("presto", 1.0)


def test_corrupt_audio_is_skipped_and_counted_in_training(tmp_path):
    import webdataset as wds

    from recipes.data import GlobalBatchLoader, open_source

    world = ToneWorld(seed=5)
    with wds.TarWriter(str(tmp_path / "mixed-000.tar"), mtime=0.0) as sink:
        for i in range(6):
            s = world.sample(i)
            data = _wav(s["audio"]) if i not in (2, 4) else _wav(s["audio"])[: 50 * i]  # two truncated files
            sink.write({"__key__": s["key"], "wav": data, "txt": s["caption"]})
    loader = GlobalBatchLoader(open_source(str(tmp_path / "mixed-000.tar")), 6, 6, seed=0, image_size=16,
                               modalities=["audio"], sample_rate=SR, audio_seconds=1.0)
    batch = loader.load(list(range(6)))
    assert len(batch) == 4 and all(s["audio"].shape == (SR,) for s in batch)
    assert loader.bad_count == 2 and len(loader.bad_keys) == 2
    assert all("tones-train-000000" in key for key in loader.bad_keys)
