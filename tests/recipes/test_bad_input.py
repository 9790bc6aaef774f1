"""Issue 12: what a user sees on bad input at the command line and in the loaders: one line (exit status 2)
before any model loads, never a traceback after the work, never a silently wrong result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes import cli
from recipes.cli import main
from tests.conftest import copy_official

from ..unified.test_unified import SHAPES, draw


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fails the test if a command loads a model: the arguments must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_unified", refuse)
    import hart_core.pipeline

    monkeypatch.setattr(hart_core.pipeline.HARTPipeline, "from_pretrained", refuse)
    monkeypatch.setattr("hart_core.debug.debug_pipeline", refuse)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def copy_model(model_dir: Path, dst: Path) -> Path:
    shutil.copytree(model_dir, dst)
    return dst


# -- item 7: nonsense arguments are refused by the parser, before any model loads -----------------


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--prompt", "x", "--top-k", "-3"], "--top-k: must be 0 or more"),
    (["generate", "--prompt", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["generate", "--prompt", "x", "--cfg", "nan"], "--cfg: must be a finite number"),
    (["generate", "--prompt", "x", "--cfg", "inf"], "--cfg: must be a finite number"),
    (["generate", "--prompt", "x", "--segments", "0"], "--segments: must be at least 1"),
    (["generate", "--prompt", "x", "--device", "bogus"], "is not a device"),
    (["caption", "x.png", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
    (["ask", "--image", "x.png", "--question", "q", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
    (["eval", "--n", "0"], "--n: must be at least 1"),
    (["t2i", "--debug-model", "--prompt", "x", "--cfg", "nan"], "--cfg: must be a finite number"),
    (["t2i", "--debug-model", "--prompt", "x", "--top-p", "2"], "--top-p: must be between 0 and 1"),
    (["t2i", "--debug-model", "--prompt", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["t2i", "--debug-model", "--prompt", "x", "--device", "cuda:x"], "is not a device"),
])
def test_nonsense_arguments_are_refused_by_the_parser(argv, expected, capsys, no_model_load):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys, no_model_load):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--prompt", "x", "--device", "cuda"])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "t2i"])
def test_bad_prompts_are_one_line(tmp_path, capsys, no_model_load, command):
    base = [command, "--out", str(tmp_path / "x.png")] + (["--debug-model", "--quiet"] if command == "t2i" else [])
    assert main([*base, "--prompts-file", str(tmp_path)]) == 2  # a folder
    assert "is a folder" in one_error(capsys)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a red circle\n\x00\x00\n")
    assert main([*base, "--prompts-file", str(nul)]) == 2
    assert "empty prompt" in one_error(capsys)
    assert main([*base, "--prompt", "\x00"]) == 2
    assert "empty prompt" in one_error(capsys)
    assert not list(tmp_path.glob("*.png"))


def test_missing_files_are_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    assert main(["caption", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in one_error(capsys)
    assert main(["ask", "--image", str(tmp_path), "--question", "q"]) == 2
    assert "is not a file" in one_error(capsys)
    assert main(["generate", "--modality", "video", "--given", str(tmp_path / "no.mp4"), "--out",
                 str(tmp_path / "v.mp4")]) == 2
    assert "does not exist" in one_error(capsys)


def test_decompression_bomb_is_one_line(tmp_path, model_dir, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 Mpixels in a few kB; Pillow itself only warns
    assert main(["caption", "--model", str(model_dir), str(bomb)]) == 2
    assert "DecompressionBomb" in one_error(capsys)


# -- item 7: malformed model folders are one line -----------------------------------------------


@pytest.mark.parametrize("change, expected", [
    (lambda c: {**c, "max_length": "long"}, "max_length must be int"),
    (lambda c: {**c, "text_loss_weight": [1]}, "text_loss_weight must be float"),
    (lambda c: {**c, "no_such_setting": 1}, "no_such_setting"),
    (lambda c: {**c, "heads": "image"}, "config.json"),
    (lambda c: {**c, "heads": [{**c["heads"][0], "diff_width": "wide"}]}, "diff_width must be int"),
    (lambda c: [c], "model_type"),
])
def test_malformed_config_json_is_one_line(tmp_path, model_dir, capsys, change, expected):
    folder = copy_model(model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))
    assert main(["generate", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    line = one_error(capsys)
    assert expected in line, line
    assert not (tmp_path / "x.png").exists()


def test_truncated_spm_model_is_one_line(tmp_path, model_dir, capsys):
    folder = copy_model(model_dir, tmp_path / "m")
    spm = folder / "text_tokenizer" / "spm.model"
    spm.write_bytes(spm.read_bytes()[:100])
    assert main(["caption", "--model", str(folder), str(folder / "config.json")]) == 2
    assert "not a readable sentencepiece model" in one_error(capsys)


# -- item 3: damaged or non-finite weights are refused, never drawn ------------------------------


def test_bit_flipped_weights_are_refused(tmp_path, model_dir, image_file, capsys):
    folder = copy_model(model_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40
    weights.write_bytes(bytes(data))
    assert main(["caption", "--model", str(folder), str(image_file)]) == 2
    assert "damaged" in one_error(capsys)
    assert main(["generate", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    assert "damaged" in one_error(capsys)
    assert not (tmp_path / "x.png").exists()


def test_all_nan_weights_are_refused(tmp_path, model_dir, capsys):
    from safetensors.torch import load_file, save_file

    folder = copy_model(model_dir, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
              folder / "model.safetensors")
    (folder / "weights.sha256").unlink()  # a folder without checksums: the finiteness check alone
    assert main(["generate", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    assert "non-finite weights" in one_error(capsys)
    assert not (tmp_path / "x.png").exists()


# -- item 8: no code from a model folder, no files outside it -----------------------------------


def _remote_code_folder(folder: Path, marker: Path) -> Path:
    """A tiny Qwen2 folder whose config.json names custom code (auto_map) that writes a marker when imported."""
    from hart_core.debug import byte_level_tokenizer, tiny_qwen2

    tiny_qwen2(hidden_size=32, seed=1).save_pretrained(folder)
    tok = byte_level_tokenizer()
    tok.save_pretrained(folder)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                    "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n"
                                    "from transformers import Qwen2Config, Qwen2ForCausalLM\n"
                                    "class EvilConfig(Qwen2Config): model_type = 'evil_lm'\n"
                                    "class Evil(Qwen2ForCausalLM): config_class = EvilConfig\n")
    for name in ("config.json", "tokenizer_config.json"):
        cfg = json.loads((folder / name).read_text())
        cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.Evil",
                           "AutoModelForCausalLM": "evil.Evil", "AutoTokenizer": ["evil.EvilTokenizer", None]}
        if name == "config.json":
            cfg["model_type"] = "evil_lm"  # no built-in class to fall back on: only its own code could load it
        (folder / name).write_text(json.dumps(cfg))
    return folder


def test_hugging_face_folders_never_run_their_code(tmp_path, monkeypatch):
    from hart_core.text_encoder import TextEncoder
    from modalities import TextTokenizer
    from unified.backbone import Backbone

    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked whether to run the code"))
    marker = tmp_path / "pwned"
    folder = _remote_code_folder(tmp_path / "lm", marker)
    for load in (lambda: Backbone.from_pretrained(folder), lambda: TextTokenizer.from_hf(folder),
                 lambda: TextEncoder.from_pretrained(folder, max_length=8)):
        try:
            load()  # the built-in Qwen2 classes, or a refusal; never evil.py
        except (ValueError, OSError):
            pass
        assert not marker.exists()


def test_remote_code_folder_is_one_line_at_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = _remote_code_folder(tmp_path / "lm", marker)
    hart = copy_official(tmp_path / "hart")
    assert main(["t2i", "--hart", str(hart), "--text-encoder", str(folder), "--prompt", "x",
                 "--device", "cpu", "--out", str(tmp_path / "x.png")]) == 2
    assert "custom code" in one_error(capsys)
    assert not marker.exists()


def test_codec_paths_stay_inside_the_model_folder(tmp_path, model_dir, capsys):
    folder = copy_model(model_dir, tmp_path / "m")
    shutil.copytree(folder / "codecs" / "image" / "tokenizer", tmp_path / "elsewhere")
    codec_json = folder / "codecs" / "image" / "codec.json"
    config = json.loads(codec_json.read_text())
    codec_json.write_text(json.dumps({**config, "tokenizer": "../../../elsewhere"}))
    assert main(["generate", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    assert "points outside the codec folder" in one_error(capsys)


# -- item 4: the CLI sees images as training does -------------------------------------------------


def _exif_rotated_jpeg(path: Path) -> None:
    img = Image.new("RGB", (24, 16), (240, 240, 240))
    img.paste((200, 30, 30), (0, 0, 8, 16))  # a red band on the left, stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("kind", ["16-bit", "rgba-transparent", "exif-rotated", "non-square"])
def test_cli_images_are_the_training_tensors(tmp_path, model_dir, kind):
    from modalities import load_codec
    from recipes.data.decode import decode_sample
    from recipes.media import read_images

    if kind == "16-bit":
        path = tmp_path / "a.png"
        Image.fromarray(np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250).save(path)
        assert Image.open(path).mode.startswith("I;16")
    elif kind == "rgba-transparent":
        path = tmp_path / "a.png"
        img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
        img.paste((0, 0, 255, 255), (4, 4, 12, 12))
        img.save(path)
    elif kind == "exif-rotated":
        path = tmp_path / "a.jpg"
        _exif_rotated_jpeg(path)
    else:
        path = tmp_path / "a.png"
        draw(*SHAPES["a red circle"]).resize((40, 16)).save(path)
    codec = load_codec(model_dir / "codecs" / "image")
    cli_tensor = codec.preprocess(read_images([path], codec.image_size))
    raw = {"__key__": "a", path.suffix.lstrip("."): path.read_bytes(), "txt": "x"}
    training = codec.preprocess([decode_sample(raw, codec.image_size, modalities=("image",))["image"]])
    assert cli_tensor.shape == (1, 3, 16, 16)
    assert torch.equal(cli_tensor, training)
    if kind == "rgba-transparent":  # composited onto white, not black
        assert cli_tensor[0, :, 0, 0].min() > 0.9
    if kind == "exif-rotated":  # the red band is on top once turned upright
        assert cli_tensor[0, 0, 1, 8] > cli_tensor[0, 1, 1, 8] + 0.5


# -- item 5: outputs are never half-written -------------------------------------------------------


def test_full_disk_leaves_no_partial_file(tmp_path, model_dir, capsys, monkeypatch):
    """The second image hits a full disk: the first is complete, nothing half-written lies under any name."""
    real_save = Image.Image.save
    calls = []

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    out = tmp_path / "out" / "g.png"
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--batch-size", "1", "--out", str(out), "--quiet"]) == 2
    assert "No space left on device" in one_error(capsys)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["g_000.png", "g_prompts.txt"]  # no g_001.png, no temporary file
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert Image.open(out.parent / "g_000.png").size == (16, 16)


def test_unwritable_output_fails_before_the_model_loads(tmp_path, capsys, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["generate", "--prompt", "x"], ["t2i", "--debug-model", "--prompt", "x"], ["demo"], ["eval"]):
        assert main([*argv, "--out", str(blocker / "sub" / "x.png")]) == 2
        assert "cannot write to" in one_error(capsys)


def test_t2i_writes_each_batch_as_it_is_made(tmp_path, capsys, monkeypatch):
    import hart_core.pipeline as pipeline

    real = pipeline.generate_images
    seen = []

    def spy(*args, **kwargs):
        seen.append(sorted(p.name for p in tmp_path.glob("t_*.png")))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate_images", spy)
    assert main(["t2i", "--debug-model", "--quiet", "--device", "cpu", "--prompt", "a", "--prompt", "b",
                 "--prompt", "c", "--batch-size", "1", "--out", str(tmp_path / "t.png")]) == 0
    assert seen == [[], ["t_000.png"], ["t_000.png", "t_001.png"]]
