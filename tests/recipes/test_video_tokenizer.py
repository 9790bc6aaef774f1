"""A frame tokenizer trained on video clips (the tokenizer task reads every sampled frame of an mp4 sample),
and the reconstruction report on Moving Shapes clips that says how much of a clip a codec keeps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.eval.reconstruction import clip_reconstruction_report, main
from recipes.tasks import frames_of

from .conftest import write_moving_shards

ROOT = Path(__file__).resolve().parents[2]


def test_frames_of_takes_every_frame_of_a_clip_and_the_image_of_a_still():
    clip = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    still = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = frames_of([{"video": clip}, {"image": Image.fromarray(still)}, {"video": clip[:1]}])
    assert out.dtype == torch.uint8 and out.shape == (5, 8, 8, 3)
    assert torch.equal(out[:3], clip) and np.array_equal(out[3].numpy(), still) and torch.equal(out[4], clip[0])
    with pytest.raises(ValueError, match="neither an image nor a video"):
        frames_of([{"key": "k", "caption": "x"}])


class PassThroughCodec:
    """A lossless 'codec' (its latent is the image): the report must then find every frame right."""

    image_size = (32, 32)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255

    def fhat(self, tokens: torch.Tensor, with_residual: bool = True) -> torch.Tensor:
        return tokens

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return latent


def test_clip_report_finds_a_lossless_codec_perfect():
    """Catches frames or boxes taken from other times than the judged frames (a misaligned track)."""
    report = clip_reconstruction_report(PassThroughCodec(), n=6, split="train", frames=4, batch_size=4)
    for name in ("discrete", "hybrid"):
        assert report[name]["frames"] == 1.0 and report[name]["identity"] == 1.0
        assert report[name]["track_error_px"] < 0.6  # centroid of the drawn shape vs its box centre
    assert report["n"] == 6 and report["frames"] == 4


@pytest.mark.parametrize("frames", ["1", "9"])
def test_cli_refuses_frame_counts_a_clip_cannot_give(frames, capsys):
    with pytest.raises(SystemExit) as e:
        main(["unused-codec", "--world", "moving", "--frames", frames])
    assert e.value.code == 2 and "--frames must be 2 to 8" in capsys.readouterr().err


@pytest.mark.skipif(not (ROOT / "recipes" / "pretrained" / "moving_shapes").is_dir(), reason="no shipped model")
def test_cli_reports_a_shipped_video_codec(tmp_path, capsys):
    codec = ROOT / "recipes" / "pretrained" / "moving_shapes" / "codecs" / "video"
    out = tmp_path / "r.json"
    assert main([str(codec), "--world", "moving", "--split", "train", "--n", "4", "--out", str(out)]) == 0
    assert "per-frame adherence" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert 0 <= report["discrete"]["frames"] <= 1 and report["hybrid"]["track_error_px"] >= 0


def test_the_tokenizer_recipe_trains_on_mp4_clips(tmp_path):
    """The moving-shapes tokenizer config on a tiny mp4 shard (and a broken clip, skipped and counted)
    exports an image codec that codes the clips' frames."""
    pytest.importorskip("decord")
    from modalities import load_codec
    from recipes.data.moving_shapes import MovingShapesWorld

    data = write_moving_shards(tmp_path / "data", n=12)
    out = tmp_path / "tok"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    config = ROOT / "recipes" / "configs" / "moving_shapes_tokenizer.yaml"
    proc = subprocess.run([sys.executable, "-m", "recipes.train", str(config),
                           f"data={data}", f"output_dir={out}",
                           "steps=3", "save_every=3", "global_batch=4", "micro_batch=4"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["recon"]) for r in rows)
    assert rows[-1]["bad_samples"] >= 1
    codec = load_codec(out / "final")
    frames = MovingShapesWorld(seed=0, image_size=32, num_frames=8).sample(0)["frames"][:4]
    assert codec.decode(codec.encode(frames)).shape == (4, 3, 32, 32)
