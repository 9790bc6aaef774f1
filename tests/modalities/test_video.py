"""Video files through decord (and torchcodec where it loads), the writer, and the per-frame video codec."""

import numpy as np
import pytest
import torch
from PIL import Image

from modalities import (
    VideoCodec,
    VideoReadError,
    debug_image_codec,
    load_codec,
    open_video,
    read_video,
    sample_indices,
    write_video,
)
from modalities.video_io import available_backends, fit_frames

BACKENDS = available_backends()
pytestmark = pytest.mark.skipif("decord" not in BACKENDS, reason="decord is not installed (pip install -e .[video])")


def moving_square(T=10, size=32, side=8):
    """A red square moving right by 2 px a frame on grey: its left edge is at 2 t."""
    frames = np.full((T, size, size, 3), 128, np.uint8)
    for t in range(T):
        frames[t, 12 : 12 + side, 2 * t : 2 * t + side] = (230, 30, 30)
    return frames


def red_centroid_x(frame):
    red = (frame[..., 0].astype(int) > 180) & (frame[..., 1].astype(int) < 90)
    return np.nonzero(red)[1].mean()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "square.mp4", moving_square(), fps=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_and_exact_seeking(clip_path, backend):
    reader = open_video(clip_path, backend)
    assert (reader.num_frames, reader.size) == (10, (32, 32)) and reader.fps == pytest.approx(10)
    everything = reader.frames(range(10))
    assert everything.dtype == torch.uint8 and everything.shape == (10, 32, 32, 3)
    # frames asked out of order are exactly those frames
    picked = reader.frames([7, 2, 5])
    assert torch.equal(picked, everything[[7, 2, 5]])
    source = moving_square()
    assert np.abs(everything.numpy().astype(int) - source).mean() < 3  # H.264 4:2:0 at crf 12
    for t in range(10):
        assert red_centroid_x(everything[t].numpy()) == pytest.approx(2 * t + 3.5, abs=0.5)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one video reader installed")
def test_every_reader_gives_the_same_frames(clip_path):
    """decord and the fallbacks (PyAV here) decode the same pixels, frame count, size and rate."""
    readers = [open_video(clip_path, b) for b in BACKENDS]
    first = readers[0].frames(range(10))
    for r in readers[1:]:
        assert (r.num_frames, r.size, r.fps) == (10, (32, 32), pytest.approx(10))
        assert torch.equal(r.frames([9, 0, 4]), first[[9, 0, 4]]), r.backend
    with pytest.raises(VideoReadError):
        open_video(clip_path.read_bytes()[:600], BACKENDS[-1], name="cut").frames([5])


def test_sampling_by_count_stride_and_fps(clip_path):
    assert sample_indices(10, 10.0, num_frames=5) == [0, 2, 4, 6, 8]
    assert sample_indices(10, 10.0, stride=3) == [0, 3, 6, 9]
    assert sample_indices(10, 10.0, num_frames=2, stride=3, start=1) == [1, 4]
    assert sample_indices(10, 10.0, target_fps=5) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="12 frames requested"):
        sample_indices(10, 10.0, num_frames=12)
    with pytest.raises(ValueError, match="stride or target_fps"):
        sample_indices(10, 10.0, stride=2, target_fps=5)
    frames = read_video(clip_path, num_frames=4, stride=2, size=16)
    assert frames.shape == (4, 16, 16, 3)
    x = [red_centroid_x(f) for f in frames.numpy()]
    assert np.all(np.diff(x) > 1.5)  # still moving right at half the resolution, two frames a step
    with pytest.raises(VideoReadError, match="square.mp4"):
        read_video(clip_path, num_frames=20)
    # the bytes of a file (a webdataset sample) read the same
    assert torch.equal(read_video(clip_path.read_bytes(), num_frames=4, stride=2, size=16), frames)
    with pytest.raises(VideoReadError, match="sample-7"):
        read_video(clip_path.read_bytes()[:500], num_frames=4, name="sample-7")


def test_fit_frames_crops_or_stretches():
    wide = torch.zeros(2, 20, 40, 3, dtype=torch.uint8)
    wide[:, :, 10:30] = 255  # a white band in the middle half
    crop = fit_frames(wide, 10)
    assert crop.shape == (2, 10, 10, 3) and crop.float().mean() > 250  # the center is the white band
    assert fit_frames(wide, (10, 20), resize="stretch").shape == (2, 10, 20, 3)
    assert fit_frames(wide, (20, 40)) is wide


def test_gif_and_atomic_writes(tmp_path):
    frames = torch.rand(5, 3, 16, 16)
    path = write_video(tmp_path / "a.gif", frames, fps=5)
    with Image.open(path) as im:
        assert im.n_frames == 5
    reader = open_video(path)  # GIFs are read through Pillow, every frame
    assert (reader.backend, reader.num_frames, reader.size, reader.fps) == ("pillow", 5, (16, 16), 5.0)
    assert reader.frames([4, 0]).shape == (2, 16, 16, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]  # no temporary file left
    with pytest.raises(ValueError, match="NaN"):
        write_video(tmp_path / "b.mp4", torch.full((2, 3, 16, 16), float("nan")))
    assert not (tmp_path / "b.mp4").exists()
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        write_video(tmp_path / "c.avi", moving_square(2))


def test_bad_files_give_one_clear_line(tmp_path, clip_path):
    data = clip_path.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("truncated.mp4", "noise.mp4", "missing.mp4"):
        with pytest.raises(VideoReadError) as err:
            read_video(tmp_path / name, num_frames=8)
        message = str(err.value)
        assert name in message and "\n" not in message


def test_video_codec_is_the_image_codec_per_frame(tmp_path):
    image = debug_image_codec(0)
    codec = VideoCodec(image)
    frames = fit_frames(torch.from_numpy(moving_square(6)), 16)
    tokens = codec.encode(frames)
    per_image = image.encode(frames)
    assert tokens.batch_size == 6
    assert all(torch.equal(a, b) for a, b in zip(tokens.indices, per_image.indices, strict=True))
    items = codec.encode_items([frames, frames[:3]])
    assert [t.batch_size for t in items] == [6, 3]
    assert all(torch.equal(a, b) for a, b in zip(items[1].indices, tokens.select(slice(0, 3)).indices, strict=True))
    assert codec.decode(tokens).shape == (6, 3, 16, 16)
    codec.save_pretrained(tmp_path / "video")
    again = load_codec(tmp_path / "video")
    assert isinstance(again, VideoCodec) and torch.equal(again.codebook, codec.codebook)
    with pytest.raises(ValueError, match="clip"):
        codec.encode(frames[0])


def test_unified_model_writes_and_reads_clips():
    from unified.debug import debug_model

    image = debug_image_codec(0)
    model = debug_model({"image": image, "video": VideoCodec(image)})
    clips = model.generate(["a ball moving right"], modality="video", segments=3, top_k=8, seed=0)
    assert clips.shape == (1, 3, 3, 16, 16)
    frames = fit_frames(torch.from_numpy(moving_square(6)), 16)
    continued, tokens = model.generate(None, modality="video", segments=4, given=model.codecs["video"].encode_items(
        [frames[:2]]), top_k=8, seed=0, return_tokens=True)
    assert continued.shape == (1, 4, 3, 16, 16) and tokens[0].batch_size == 4
    assert len(model.describe([frames, frames[:4]], modality="video", max_new_tokens=3)) == 2
