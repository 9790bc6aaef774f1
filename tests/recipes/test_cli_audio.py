"""The audio side of the command line on a tiny model with a real (random) audio codec: continuation, text-to-audio,
captions of audio files, and one clear line for bad audio input."""

from __future__ import annotations

import pytest
import torch

from modalities import debug_audio_codec, read_audio, save_audio
from recipes.cli import main
from unified.debug import debug_model

SR = 8000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio_model") / "tiny"
    debug_model({"audio": debug_audio_codec()}).save_pretrained(folder)
    return folder


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "in.wav"
    save_audio(path, 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(2500) / SR), SR)  # 2 chunks of 1024 + a tail
    return path


def test_audio_continue(tmp_path, model_dir, wav, capsys):
    out = tmp_path / "out.wav"
    assert main(["audio", "continue", str(wav), "--model", str(model_dir), "--seconds", "0.2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    written = read_audio(out)
    assert len(written) == (2 + 2) * 1024  # the 2 whole given chunks, then ceil(0.2 s / 0.128 s) = 2 new ones
    only_new = tmp_path / "new.flac"
    assert main(["audio", "continue", str(wav), "--model", str(model_dir), "--seconds", "0.2", "--out",
                 str(only_new), "--only-new"]) == 0
    assert torch.allclose(read_audio(only_new), written[2048:], atol=2 / 32768)


def test_text_to_audio_and_audio_captions(tmp_path, model_dir, wav, capsys):
    out = tmp_path / "t2a.wav"
    assert main(["generate", "--model", str(model_dir), "--modality", "audio", "--segments", "3", "--prompt",
                 "a rising tone", "--out", str(out), "--quiet"]) == 0
    assert len(read_audio(out)) == 3 * 1024
    capsys.readouterr()
    assert main(["caption", "--model", str(model_dir), str(wav)]) == 0
    assert capsys.readouterr().out.startswith(f"{wav}\t")


def test_bad_audio_is_one_line(tmp_path, model_dir, wav, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(wav.read_bytes()[:30])
    assert main(["audio", "continue", str(broken), "--model", str(model_dir), "--out", str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.wav" in err[0]
    assert main(["audio", "continue", str(wav), "--model", str(model_dir), "--out", str(tmp_path / "o.mp4")]) == 2
    assert ".wav" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "o.mp4").exists()


def test_demo_shows_players_and_spectrograms(tmp_path, model_dir):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--out", str(out), "--prompt", "a rising tone"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("<audio controls") == 3 and "a rising tone" in page  # one prompt + given + continued
    assert len(read_audio(out / "audio00.wav")) == 16 * 1024  # 2.048 s at 8 kHz
    assert Image.open(out / "audio00.png").height == 128


def test_tones_suite_reports_each_score_beside_its_ceiling(tmp_path, model_dir, capsys):
    import json

    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model_dir), "--suite", "tones", "--n", "2", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    for name in ("seen_pairs", "heldout_pairs"):
        c = result[f"tones_continuation_{name}"]
        assert 0.0 <= c["note_accuracy"] <= 1.0 and 0.0 < c["ceiling"] <= 1.0 + 1e-9
        assert sum(k["n"] for k in c["by_pattern_and_tempo"].values()) == c["n"] == 2
        assert all(0.0 < k["ceiling"] <= 1.0 + 1e-9 for k in c["by_pattern_and_tempo"].values())
