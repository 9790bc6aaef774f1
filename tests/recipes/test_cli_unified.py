"""The unified-model subcommands on a tiny model, and their errors on bad input."""

from PIL import Image

from recipes.cli import main

from ..unified.test_unified import SHAPES, draw


def test_generate_with_previews(tmp_path, model_dir, capsys):
    out = tmp_path / "gen.png"
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--out", str(out), "--previews", "--quiet"]) == 0
    for i in range(2):
        assert Image.open(tmp_path / f"gen_{i:03d}.png").size == (16, 16)
        assert Image.open(tmp_path / f"gen_{i:03d}_scales.png").size == (4 * 16, 16)  # 4 scales side by side
    assert (tmp_path / "gen_prompts.txt").read_text().splitlines() == ["a red circle", "a blue square"]


def test_caption_and_ask(tmp_path, model_dir, image_file, capsys):
    big = tmp_path / "big.png"
    draw(*SHAPES["a red circle"], size=40).save(big)  # other sizes are resized to the model's
    assert main(["caption", "--model", str(model_dir), str(image_file), str(big)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(image_file), str(big)]
    assert main(["ask", "--model", str(model_dir), "--image", str(image_file), "--question", "what shape is it"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_demo_writes_an_index(tmp_path, model_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--out", str(out), "--prompt", "a red circle",
                 "--prompt", "a green triangle"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 3 and "a green triangle" in page
    assert Image.open(out / "01.png").size == (64, 64)


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_a_clear_error(tmp_path, model_dir, image_file, capsys):
    assert main(["caption", "--model", str(model_dir), str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in one_error(capsys)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    assert main(["caption", "--model", str(model_dir), str(corrupt)]) == 2
    assert "cannot read image" in one_error(capsys)
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in one_error(capsys)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert main(["ask", "--model", str(not_a_model), "--image", str(image_file), "--question", "q"]) == 2
    assert "config.json" in one_error(capsys)
    assert main(["generate", "--model", str(model_dir), "--prompt", " "]) == 2
    assert "empty prompt" in one_error(capsys)
    # an output folder that cannot be made fails before any compute, in one line, and writes nothing
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", str(blocker / "x.png")]) == 2
    assert "cannot write to" in one_error(capsys)
    assert main(["t2i", "--debug-model", "--prompt", "x", "--out", str(blocker / "y.png")]) == 2
    assert "cannot write to" in one_error(capsys)


def test_eval_runs_end_to_end_on_a_32px_model(tmp_path, capsys):
    """The evaluation pipeline on an untrained 32x32 model: every metric present and in range."""
    import json

    from modalities import TextTokenizer, debug_image_codec
    from recipes.data.shapes import ShapesWorld
    from unified import HeadConfig, UnifiedModel

    world = ShapesWorld(0, 32)
    text = TextTokenizer.train([world.train(i)["caption"] for i in range(100)] + ["the digit 3"], vocab_size=400)
    backbone = dict(model_type="qwen2", vocab_size=text.vocab_size, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    UnifiedModel.build(text, {"image": debug_image_codec(0, image_size=32)}, backbone,
                       heads=[HeadConfig(diff_width=32, diff_depth=1)], max_length=512).save_pretrained(tmp_path / "m")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "m"), "--n", "4", "--batch-size", "4", "--quiet",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in ("overall", "colour", "shape", "position", "count"):
        assert 0.0 <= results["shapes_t2i"][key] <= 1.0
    assert results["digits_t2i"]["classifier_heldout_accuracy"] > 0.93
    assert results["speed"]["images_per_s"] > 0
    assert "Shapes text-to-image, overall (held-out prompts)" in capsys.readouterr().out
    assert results["settings"]["split"] == "heldout" and results["settings"]["cfg"] == 3.0  # the model's default
    # training-split validation: fresh scenes past every index the training shards use
    assert main(["eval", "--model", str(tmp_path / "m"), "--n", "4", "--batch-size", "4", "--quiet",
                 "--split", "train", "--cfg", "1.5", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["split"] == "train" and results["settings"]["cfg"] == 1.5
    keys = [e["image"] for e in results["examples"] if "image" in e]
    assert keys and all(k.startswith("train_") and int(k.split("_")[1]) >= 1_000_000 for k in keys)
    assert "training-split prompts" in capsys.readouterr().out


def test_the_shipped_default_model_runs(tmp_path, image_file, capsys):
    """Without --model the commands use recipes/pretrained/shapes (committed with its eval.json)."""
    from recipes.cli import DEFAULT_MODEL

    assert (DEFAULT_MODEL / "eval.json").is_file()
    assert main(["caption", str(image_file)]) == 0
    assert capsys.readouterr().out.startswith(f"{image_file}\t")
    assert main(["generate", "--prompt", "a red circle in the top left", "--out", str(tmp_path / "g.png"),
                 "--quiet"]) == 0
    assert Image.open(tmp_path / "g.png").size == (32, 32)


def test_demo_captions_the_images_it_shows(tmp_path, model_dir):
    """The caption beside each demo image is the model's caption of that very PNG (the images were once passed
    as [0, 1] floats, which the image codec reads as [-1, 1]: washed-out pictures were captioned)."""
    import html

    from recipes.demo import ZOOM
    from unified import UnifiedModel

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--out", str(out), "--prompt", "a red circle",
                 "--prompt", "a blue square"]) == 0
    model = UnifiedModel.from_pretrained(model_dir)
    page = (out / "index.html").read_text()
    for i in range(2):
        shown = Image.open(out / f"{i:02d}.png")
        small = shown.resize((shown.width // ZOOM, shown.height // ZOOM), Image.Resampling.NEAREST)
        caption = model.describe([small], modality="image", max_new_tokens=24)[0]
        assert f"<td>{html.escape(caption)}</td></tr>" in page
