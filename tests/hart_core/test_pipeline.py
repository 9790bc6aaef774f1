"""HARTPipeline end to end with tiny random models, and loading / converting the released layout."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from hart_core.debug import byte_level_tokenizer, debug_pipeline, tiny_qwen2
from hart_core.pipeline import HARTPipeline
from hart_core.text_encoder import TextEncoder
from tests.conftest import copy_official

PROMPTS = ["a lemur", "soup bowl", "snow"]  # the debug context holds 16 bytes


@pytest.fixture(scope="module")
def pipe() -> HARTPipeline:
    return debug_pipeline()


def _run(pipe: HARTPipeline, prompts=PROMPTS, **kwargs) -> torch.Tensor:
    kwargs.setdefault("seed", 0)
    return pipe(prompts, progress=False, **kwargs)


def test_images_shape_and_range(pipe):
    images = _run(pipe)
    assert images.shape == (len(PROMPTS), 3, 16, 16)
    assert images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a constant picture
    assert not torch.equal(images[0], images[1])  # different prompts, different images
    one = pipe("snow", progress=False, seed=0)  # a bare string is one prompt
    assert one.shape == (1, 3, 16, 16)


def test_seeds(pipe):
    a, b = _run(pipe, seed=7), _run(pipe, seed=7)
    assert torch.equal(a, b)
    c = _run(pipe, seed=8)
    for i in range(len(PROMPTS)):
        assert (a[i] - c[i]).abs().max() > 1e-3


def test_batch_size(pipe):
    """The count is right whatever the batching. The generator is shared by all batches, so only
    the first batch (same composition, same generator state) is reproducible across batch sizes:
    with batch_size=1 the 2nd image is drawn after the 1st's draws, unlike in a batch of 3."""
    full = _run(pipe, batch_size=len(PROMPTS))
    one_by_one = _run(pipe, batch_size=1)
    pairs = _run(pipe, batch_size=2)
    assert full.shape == one_by_one.shape == pairs.shape == (len(PROMPTS), 3, 16, 16)
    assert torch.equal(one_by_one[0], _run(pipe, PROMPTS[:1])[0])
    assert torch.equal(pairs[:2], _run(pipe, PROMPTS[:2]))
    assert torch.equal(full, _run(pipe, batch_size=8))  # batch larger than the prompt list


def test_preview_callback(pipe):
    K = len(pipe.transformer.config.patch_nums)
    calls = []
    images = _run(pipe, callback=lambda si, k, preview: calls.append((si, k, preview.clone())))
    assert [(si, k) for si, k, _ in calls] == [(si, K) for si in range(K)]
    for _, _, preview in calls:
        assert preview.shape == images.shape
        assert preview.min() >= 0 and preview.max() <= 1
    assert torch.equal(calls[-1][2], images)
    assert not torch.equal(calls[0][2], images)  # the coarse preview is not the final image
    # the callback does not change the result
    assert torch.equal(images, _run(pipe))


def test_greedy(pipe):
    """top_k=1 takes the argmax at every scale without a draw, so every preview before the last
    scale is the same whatever the seed. The last scale still adds the diffusion head's residual,
    which is sampled from seeded noise: final images differ across seeds but repeat for one seed."""
    previews = {}
    finals = {}
    for seed in (0, 1):
        calls = []
        finals[seed] = _run(pipe, seed=seed, top_k=1, callback=lambda si, k, p, c=calls: c.append(p.clone()))
        previews[seed] = calls
    K = len(pipe.transformer.config.patch_nums)
    for si in range(K - 1):
        assert torch.equal(previews[0][si], previews[1][si]), si
    assert (finals[0] - finals[1]).abs().max() > 1e-3
    assert torch.equal(finals[0], _run(pipe, seed=0, top_k=1))
    # greedy differs from the default sampling (top-k schedule)
    assert not torch.equal(finals[0], _run(pipe, seed=0))


def test_more_smooth(pipe):
    default = _run(pipe, seed=3)
    smooth = _run(pipe, seed=3, more_smooth=True)
    assert smooth.shape == default.shape
    assert smooth.min() >= 0 and smooth.max() <= 1
    assert (smooth - default).abs().max() > 1e-3
    assert torch.equal(smooth, _run(pipe, seed=3, more_smooth=True))


def test_no_text_encoder(pipe):
    bare = HARTPipeline(pipe.tokenizer, pipe.transformer)
    with pytest.raises(ValueError, match="no text encoder"):
        bare(["a"], progress=False)


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "conv")
    for sub in ("transformer", "tokenizer"):
        assert sorted(p.name for p in (tmp_path / "conv" / sub).iterdir()) == [
            "config.json", "model.safetensors", "weights.sha256"]
    loaded = HARTPipeline.from_pretrained(tmp_path / "conv", pipe.text_encoder)
    assert loaded.transformer.config == pipe.transformer.config
    assert torch.equal(_run(loaded, seed=5), _run(pipe, seed=5))
    assert torch.equal(_run(loaded, seed=5, more_smooth=True), _run(pipe, seed=5, more_smooth=True))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_official_folder_load_and_convert(tmp_path):
    hart = copy_official(tmp_path / "hart")
    official = HARTPipeline.from_official(hart)
    cfg = official.transformer.config
    assert (cfg.context_token, cfg.context_dim, cfg.patch_nums) == (8, 32, (1, 2, 3, 4))
    assert not official.transformer.training and not official.tokenizer.training

    # the released weights land under our names (diffloss. -> diffusion_head., vae. prefix dropped)
    raw_llm = load_file(hart / "llm" / "model.safetensors")
    raw_tok = load_file(hart / "tokenizer" / "model.safetensors")
    tr_state, tok_state = official.transformer.state_dict(), official.tokenizer.state_dict()
    for k, v in raw_llm.items():
        if k.startswith("diffloss."):
            assert torch.equal(tr_state["diffusion_head." + k[len("diffloss."):]], v), k
        elif k in tr_state:
            assert torch.equal(tr_state[k], v), k
    for k, v in raw_tok.items():
        if k.startswith("vae."):
            assert torch.equal(tok_state[k[4:]], v), k
    assert not any(k.startswith("disc.") for k in tok_state)

    # from_pretrained falls back to the released layout
    _same_state(HARTPipeline.from_pretrained(hart).transformer, official.transformer)

    # convert, reload, compare
    official.save_pretrained(tmp_path / "conv")
    converted = HARTPipeline.from_pretrained(tmp_path / "conv")
    assert converted.transformer.config == cfg
    assert converted.tokenizer.config == official.tokenizer.config
    _same_state(converted.transformer, official.transformer)
    _same_state(converted.tokenizer, official.tokenizer)

    # and both generate the same images with one text encoder
    encoder = TextEncoder(tiny_qwen2(cfg.context_dim, seed=2), byte_level_tokenizer(), max_length=cfg.context_token,
                          system_prompt=None)
    official.text_encoder = converted.text_encoder = encoder
    a = _run(official, ["a cat", "dog"], seed=1)
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, _run(converted, ["a cat", "dog"], seed=1))


def test_official_folder_incomplete(tmp_path):
    from hart_core.checkpoint import CheckpointError

    hart = copy_official(tmp_path / "hart")
    shutil.rmtree(hart / "tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer/"):
        HARTPipeline.from_official(hart)
    with pytest.raises(CheckpointError, match="neither"):
        HARTPipeline.from_pretrained(tmp_path / "empty_or_missing")


def test_prompt_too_long_for_context(pipe):
    too_long = "w" * (pipe.transformer.config.context_token + 1)
    with pytest.raises(ValueError, match="tokens"):
        pipe([too_long], progress=False)
