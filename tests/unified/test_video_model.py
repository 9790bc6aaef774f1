"""Video through the unified model, public API only: frames are segments of a VideoCodec over a tiny
image codec; the backbone, the layout rule and the scale loop are the image ones."""

import pytest
import torch

from hart_core.quantizer import HybridTokens
from modalities import VideoCodec, debug_image_codec
from unified import Example
from unified.debug import debug_model, fit

FRAMES, SIZE, SIDE, SPEED = 4, 16, 4, 2


def moving_square(x0: int, y0: int, colour=(230, 40, 40)) -> torch.Tensor:
    """uint8 [FRAMES, 16, 16, 3]: a square moving right SPEED px a frame."""
    clip = torch.full((FRAMES, SIZE, SIZE, 3), 240, dtype=torch.uint8)
    for t in range(FRAMES):
        x = x0 + SPEED * t
        clip[t, y0 : y0 + SIDE, x : x + SIDE] = torch.tensor(colour, dtype=torch.uint8)
    return clip


@pytest.fixture(scope="module")
def model():
    return debug_model({"video": VideoCodec(debug_image_codec(0))}, seed=0)


@pytest.mark.parametrize("given", [0, 1])
def test_video_generation_cached_equals_uncached(model, given):
    kw = dict(modality="video", segments=FRAMES, cfg=2.0, top_k=10, seed=4, return_tokens=True)
    if given:
        kw["given"] = model.codecs["video"].encode_items([moving_square(0, 2)[:1], moving_square(3, 8)[:1]])
    a, ta = model.generate(["a ball moving right", "a ball moving left"], use_cache=True, **kw)
    b, tb = model.generate(["a ball moving right", "a ball moving left"], use_cache=False, **kw)
    assert a.shape == (2, FRAMES, 3, SIZE, SIZE)
    for x, y in zip(ta, tb, strict=True):
        assert all(torch.equal(i, j) for i, j in zip(x.indices, y.indices, strict=True))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_changing_frame_3_leaves_frames_1_and_2_untouched(model):
    clip = moving_square(0, 2)
    other = clip.clone()
    other[2] = 255 - other[2]  # frame 3 (index 2) inverted
    tokens = model.codecs["video"].encode_items([clip, other])
    batch = model.builder.build([model.row("t2i", t, "a ball moving right", modality="video") for t in tokens])
    hidden = model.backbone(model.embed(batch), batch.positions, batch.attention_mask())
    item = batch.items[0]
    third = item.start + item.pattern.segment_start(2)
    assert torch.equal(hidden[0, :third], hidden[1, :third])
    assert not torch.allclose(hidden[0, third : item.start + item.length], hidden[1, third : item.start + item.length])


def test_a_tiny_model_learns_to_continue_a_moving_object():
    """Squares at 6 starts move right 2 px a frame; trained on the clips (no prompt), the model writes the
    next frame of each from the frames before it with the right codes at >= 0.9 token accuracy."""
    model = debug_model({"video": VideoCodec(debug_image_codec(0))}, seed=0, caption_dropout=0.0)
    codec = model.codecs["video"]
    clips = [moving_square(x0, y0) for x0, y0 in ((0, 2), (2, 2), (4, 9), (1, 6), (3, 11), (5, 4))]
    tokens = codec.encode_items(clips)
    examples = [Example("continuation", t, None, modality="video") for t in tokens]
    g = torch.Generator().manual_seed(0)
    fit(model, examples, 250, lr=3e-3, generator=g)
    given = [t.select(slice(0, FRAMES - 1)) for t in tokens]
    _, written = model.generate(None, modality="video", segments=FRAMES, given=given, cfg=0.0, top_k=1, seed=0,
                                return_tokens=True)
    hits = sum(int((a[-1] == b[-1]).sum()) for w, t in zip(written, tokens, strict=True)
               for a, b in zip(w.indices, t.indices, strict=True))
    total = sum(int(b[-1].numel()) for t in tokens for b in t.indices)
    assert hits / total >= 0.9, f"continuation token accuracy {hits / total:.3f}"


def test_self_correction_on_clips_keeps_each_frame_latent():
    """Self-correction re-encodes every written clip's frames in one batch: each item gets back its own frames
    (one row per frame), with erroneous inputs that, plus the correcting residual, still sum to that frame's latent."""
    model = debug_model({"video": VideoCodec(debug_image_codec(0))}, seed=0, caption_dropout=0.0)
    model.config.self_correction = 0.5
    codec = model.codecs["video"]
    clips = [moving_square(0, 2), moving_square(5, 9, colour=(40, 40, 230))[:3]]  # 4 and 3 frames
    tokens = codec.encode_items(clips)
    examples = [Example("t2v", t, "a square moving right", modality="video") for t in tokens]
    batch = model.training_batch(examples, torch.Generator().manual_seed(0))
    written = [it.item for it in batch.items if it.item.loss]
    assert [it.tokens.batch_size for it in written] == [4, 3]
    for item, clean in zip(written, tokens, strict=True):
        assert all(codes.shape[0] == clean.batch_size for codes in item.inputs)
        from_inputs = codec.fhat(HybridTokens(item.inputs, item.tokens.residual, item.tokens.grids))
        torch.testing.assert_close(from_inputs, codec.fhat(clean), rtol=0, atol=1e-5)
    errors = sum(int((a != b).sum()) for it in written for a, b in zip(it.inputs[:-1], it.tokens.indices[:-1],
                                                                         strict=True))
    assert errors > 0
    losses = model(batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["loss"])
