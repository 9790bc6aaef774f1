"""The `hart-unified` command line, run in-process (and once as `python -m recipes.cli`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hart_core.debug import byte_level_tokenizer, tiny_qwen2
from hart_core.pipeline import HARTPipeline
from recipes.cli import EXIT_BAD_INPUT, build_parser, main
from tests.conftest import copy_official

REPO = Path(__file__).resolve().parents[2]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "RGB"
        assert img.size == (16, 16)
        return np.asarray(img).copy()


def _t2i(tmp_path: Path, *extra: str) -> int:
    return main(["t2i", "--debug-model", "--quiet", "--device", "cpu", *extra])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_t2i_debug_two_prompts(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert _t2i(tmp_path, "--prompt", "a", "--prompt", "b", "--out", str(out)) == 0
    paths = [tmp_path / "x_000.png", tmp_path / "x_001.png"]
    a, b = (_png(p) for p in paths)
    assert not np.array_equal(a, b)
    assert not out.exists()
    assert (tmp_path / "x_prompts.txt").read_text() == "a\nb\n"
    captured = capsys.readouterr()
    assert captured.out.split() == [str(p) for p in paths]
    assert "RANDOMLY INITIALISED" in captured.err


def test_t2i_single_prompt_and_seed(tmp_path):
    assert _t2i(tmp_path, "--prompt", "a", "--out", str(tmp_path / "one.png")) == 0
    assert _t2i(tmp_path, "--prompt", "a", "--out", str(tmp_path / "again.png")) == 0
    assert _t2i(tmp_path, "--prompt", "a", "--seed", "1", "--out", str(tmp_path / "other.png")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "one.png", "other.png"]  # no prompts file
    one = _png(tmp_path / "one.png")
    assert np.array_equal(one, _png(tmp_path / "again.png"))
    assert not np.array_equal(one, _png(tmp_path / "other.png"))


def test_t2i_options(tmp_path):
    assert _t2i(tmp_path, "--prompt", "a", "--out", str(tmp_path / "default.png")) == 0
    assert _t2i(tmp_path, "--prompt", "a", "--steps", "4", "--out", str(tmp_path / "steps.png")) == 0
    default = _png(tmp_path / "default.png")
    assert not np.array_equal(default, _png(tmp_path / "steps.png"))  # the step count reaches the head
    args = ("--prompt", "a", "--top-k", "5", "--top-p", "0.9", "--cfg", "2", "--more-smooth", "--batch-size", "1")
    assert _t2i(tmp_path, *args, "--out", str(tmp_path / "opts.png")) == 0
    _png(tmp_path / "opts.png")


def test_t2i_decode_dtype(tmp_path, capsys):
    assert _t2i(tmp_path, "--prompt", "a", "--out", str(tmp_path / "fp32.png")) == 0
    assert _t2i(tmp_path, "--prompt", "a", "--decode-dtype", "bf16", "--out", str(tmp_path / "bf16.png")) == 0
    full, half = _png(tmp_path / "fp32.png").astype(int), _png(tmp_path / "bf16.png").astype(int)
    assert np.abs(full - half).max() <= 8  # the same image, decoded in bf16
    args = ("--prompt", "a", "--path", "eager", "--decode-dtype", "bf16", "--out", str(tmp_path / "x.png"))
    assert _t2i(tmp_path, *args) == 2
    assert "eager path decodes" in _one_error_line(capsys.readouterr().err)


def test_t2i_zero_steps_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # refused by the argument parser, before any model loads
        _t2i(tmp_path, "--prompt", "a", "--steps", "0", "--out", str(tmp_path / "x.png"))
    assert exc.value.code == 2
    assert "--steps: must be at least 1" in capsys.readouterr().err


def test_t2i_prompts_file(tmp_path):
    listing = tmp_path / "prompts.txt"
    listing.write_text("first\n\n  second  \n")
    assert _t2i(tmp_path, "--prompts-file", str(listing), "--out", str(tmp_path / "out" / "p.png")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p_000.png", "p_001.png", "p_prompts.txt"]
    assert (tmp_path / "out" / "p_prompts.txt").read_text() == "first\nsecond\n"


def test_t2i_without_prompt(tmp_path, capsys):
    assert _t2i(tmp_path, "--out", str(tmp_path / "x.png")) == EXIT_BAD_INPUT == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--prompt" in line
    assert not any(tmp_path.iterdir())


def test_t2i_bad_input_exits_2(tmp_path, capsys):
    assert _t2i(tmp_path, "--prompt", " ", "--out", str(tmp_path / "x.png")) == 2
    assert "empty prompt" in _one_error_line(capsys.readouterr().err)
    assert _t2i(tmp_path, "--prompt", "a" * 17, "--out", str(tmp_path / "x.png")) == 2
    assert "17 tokens" in _one_error_line(capsys.readouterr().err)
    assert _t2i(tmp_path, "--prompts-file", str(tmp_path / "none.txt")) == 2
    assert "none.txt" in _one_error_line(capsys.readouterr().err)


def test_t2i_missing_folders(tmp_path, capsys):
    code = main(["t2i", "--hart", "/nonexistent", "--text-encoder", "/nonexistent", "--prompt", "a",
                 "--out", str(tmp_path / "x.png"), "--device", "cpu"])
    assert code == 2
    assert "/nonexistent" in _one_error_line(capsys.readouterr().err)
    assert main(["t2i", "--prompt", "a", "--device", "cpu"]) == 2
    assert "--hart" in _one_error_line(capsys.readouterr().err)


@pytest.fixture
def text_encoder_dir(tmp_path) -> Path:
    folder = tmp_path / "qwen"
    tiny_qwen2(hidden_size=32, seed=4).save_pretrained(folder)  # the fixture's context is 8 x 32
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def test_t2i_real_folders(tmp_path, text_encoder_dir, capsys):
    hart = copy_official(tmp_path / "hart")
    common = ["t2i", "--hart", str(hart), "--text-encoder", str(text_encoder_dir), "--no-system-prompt",
              "--device", "cpu", "--quiet", "--prompt", "a cat"]
    assert main([*common, "--max-length", "8", "--out", str(tmp_path / "official.png")]) == 0
    _png(tmp_path / "official.png")
    # a converted folder gives the same picture
    assert main(["convert", "--hart", str(hart), "--out", str(tmp_path / "conv")]) == 0
    common[2] = str(tmp_path / "conv")
    assert main([*common, "--max-length", "8", "--out", str(tmp_path / "converted.png")]) == 0
    assert np.array_equal(_png(tmp_path / "official.png"), _png(tmp_path / "converted.png"))
    capsys.readouterr()
    # without --max-length the text context follows the model (8 slots here, 300 for HART)
    assert main([*common, "--out", str(tmp_path / "default.png")]) == 0
    assert np.array_equal(_png(tmp_path / "official.png"), _png(tmp_path / "default.png"))
    # a text context that does not fit the model is a clear error, not a traceback
    assert main([*common, "--max-length", "9", "--out", str(tmp_path / "bad.png")]) == 2
    assert "context must be [B, 8, 32]" in _one_error_line(capsys.readouterr().err)
    # a missing --hart folder with a good text encoder
    common[2] = str(tmp_path / "missing")
    assert main([*common, "--max-length", "8"]) == 2
    assert "missing" in _one_error_line(capsys.readouterr().err)


def test_convert(tmp_path, capsys):
    hart = copy_official(tmp_path / "hart")
    out = tmp_path / "conv"
    assert main(["convert", "--hart", str(hart), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    for sub in ("transformer", "tokenizer"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["config.json", "model.safetensors", "weights.sha256"]
    converted = HARTPipeline.from_pretrained(out)
    official = HARTPipeline.from_official(hart)
    for a, b in ((converted.transformer, official.transformer), (converted.tokenizer, official.tokenizer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) for k in sa)


def test_convert_bad_folder(tmp_path, capsys):
    assert main(["convert", "--hart", str(tmp_path / "nothing"), "--out", str(tmp_path / "conv")]) == 2
    assert "llm/" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "conv").exists()


@pytest.mark.parametrize("argv", [["--help"], ["t2i", "--help"], ["convert", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hart-unified" in out
    if argv[0] == "t2i":
        assert "--debug-model" in out and "--steps" in out


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])  # a command is required
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["t2i", "--dtype", "fp64"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert build_parser().parse_args(["convert", "--hart", "a", "--out", "b"]).command == "convert"


def test_module_subprocess(tmp_path):
    out = tmp_path / "sub.png"
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.cli", "t2i", "--debug-model", "--prompt", "a lemur", "--out", str(out),
         "--quiet", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    _png(out)
