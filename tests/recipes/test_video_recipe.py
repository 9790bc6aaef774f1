"""The video recipe end to end: Moving Shapes mp4 shards through decord into the DeepSpeed trainer (a
corrupt clip skipped and counted), the exported model, the moving_shapes evaluation suite and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import write_moving_shards

pytest.importorskip("decord")

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "video_debug.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    data = write_moving_shards(root / "data", n=15)
    out = root / "run"
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "recipes.train", str(RECIPE),
                           f"data={data}", f"output_dir={out}", "steps=4",
                           "save_every=4"], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_trains_on_mp4_shards_and_counts_the_broken_clip(trained):
    out, proc = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["bad_samples"] >= 1 and "video_acc_scale0" in rows[-1]
    assert "broken-clip" in proc.stdout + proc.stderr


def test_exported_model_writes_reads_and_continues_clips(trained):
    from recipes.data.moving_shapes import MovingShapesWorld
    from recipes.eval.evaluate import evaluate
    from unified import UnifiedModel

    model = UnifiedModel.from_pretrained(trained[0] / "final")
    assert set(model.codecs) == {"video"}
    clips = model.generate(["a red circle moving right"], modality="video", segments=4, seed=0)
    assert clips.shape == (1, 4, 3, 32, 32)
    frames = torch.from_numpy(MovingShapesWorld().sample(0)["frames"][:4])
    assert len(model.describe([frames], modality="video", max_new_tokens=6)) == 1
    results = evaluate(model, n=2, batch_size=2, progress=False, video_frames=4)
    assert set(results) >= {"moving_t2v", "moving_caption", "moving_continuation", "moving_i2v", "video_speed"}
    assert "shapes_t2i" not in results  # the image suites need an image codec
    for key in ("frames", "identity", "direction", "overall"):
        assert 0.0 <= results["moving_t2v"][key] <= 1.0
    assert results["moving_continuation"]["track_error_px"] >= 0 and results["settings"]["video_frames"] == 4


def test_cli_writes_and_continues_video(trained, tmp_path):
    from modalities import read_video
    from recipes.cli import main
    from recipes.data.moving_shapes import MovingShapesWorld

    model = str(trained[0] / "final")
    assert main(["generate", "--model", model, "--modality", "video", "--segments", "4", "--prompt",
                 "a blue square moving up", "--out", str(tmp_path / "clip.mp4"), "--quiet"]) == 0
    assert read_video(tmp_path / "clip.mp4").shape == (4, 32, 32, 3)
    from modalities import write_video

    write_video(tmp_path / "start.mp4", MovingShapesWorld().sample(1)["frames"])
    assert main(["generate", "--model", model, "--modality", "video", "--segments", "4", "--given",
                 str(tmp_path / "start.mp4"), "--given-segments", "2", "--out", str(tmp_path / "more.gif"),
                 "--quiet"]) == 0
    assert (tmp_path / "more.gif").is_file()
    assert main(["generate", "--model", model, "--modality", "video", "--segments", "2", "--given",
                 str(tmp_path / "start.mp4"), "--given-segments", "2", "--out", str(tmp_path / "x.mp4")]) == 2


def test_cli_describes_clips_and_the_demo_shows_them(trained, tmp_path, capsys):
    from modalities import write_video
    from recipes.cli import main
    from recipes.data.moving_shapes import MovingShapesWorld

    model = str(trained[0] / "final")
    clip = write_video(tmp_path / "clip.mp4", MovingShapesWorld().sample(2)["frames"])
    assert main(["caption", "--model", model, "--frames", "4", str(clip)]) == 0
    assert capsys.readouterr().out.startswith(f"{clip}\t")
    assert main(["ask", "--model", model, "--image", str(clip), "--frames", "4", "--question",
                 "how many objects are there?"]) == 0
    assert main(["generate", "--model", model, "--modality", "video", "--segments", "3", "--gif", "--quiet",
                 "--prompt", "a red circle moving left", "--out", str(tmp_path / "g.mp4")]) == 0
    assert (tmp_path / "g.mp4").is_file() and (tmp_path / "g.gif").is_file()
    assert main(["demo", "--model", model, "--out", str(tmp_path / "demo"), "--frames", "3"]) == 0
    page = (tmp_path / "demo" / "index.html").read_text()
    assert page.count("<img src='clip") == 4 and "the model's description" in page
    assert main(["caption", "--model", model, str(clip), str(tmp_path / "g.gif"), "--frames", "2"]) == 0


def test_the_cli_reads_images_as_training_does(tmp_path):
    """A transparent PNG is composited onto white and a wide photo center-cropped, as in training."""
    from PIL import Image

    from recipes.data.decode import DecodeSettings, decode_image
    from recipes.media import read_images

    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 0, 30, 20))
    rgba.save(tmp_path / "a.png")
    (got,) = read_images([tmp_path / "a.png"], (16, 16))
    want = decode_image("a", (tmp_path / "a.png").read_bytes(), "png", DecodeSettings((16, 16)))
    assert got.tobytes() == want.tobytes() and got.size == (16, 16)
    assert got.getpixel((8, 8))[2] > 200 and got.getpixel((0, 8)) != (0, 0, 0)  # blue centre, no black


def test_the_shipped_video_model_loads_and_runs():
    from unified import UnifiedModel

    folder = Path(__file__).resolve().parents[2] / "recipes" / "pretrained" / "moving_shapes"
    model = UnifiedModel.from_pretrained(folder)
    assert set(model.codecs) == {"video"} and model.config.head("video").default_cfg == 1.0
    clips = model.generate(["a red circle moving right"], modality="video", segments=2, seed=0)
    assert clips.shape == (1, 2, 3, 32, 32) and torch.isfinite(clips).all()
    assert isinstance(model.describe([(clips[0] * 255).byte().permute(0, 2, 3, 1)], modality="video")[0], str)
