import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modalities import HybridTokens, ImageCodec, debug_image_codec, load_codec


@pytest.fixture(scope="module")
def codec() -> ImageCodec:
    return debug_image_codec(seed=0)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tokens(codec, pixels) -> HybridTokens:
    return codec.encode(pixels)


def assert_same_tokens(a: HybridTokens, b: HybridTokens) -> None:
    assert a.grids == b.grids
    for x, y in zip(a.indices, b.indices, strict=True):
        assert torch.equal(x, y)
    torch.testing.assert_close(a.residual, b.residual, rtol=0, atol=0)


def test_properties(codec):
    assert codec.name == "image" and codec.codec_type == "hart_image"
    assert codec.ndim == 2 and codec.num_scales == 4
    assert codec.grids == ((1, 1), (2, 2), (3, 3), (4, 4))
    assert codec.tokens_per_scale == (1, 4, 9, 16)
    assert codec.image_size == (16, 16)
    assert codec.codebook.shape == (codec.codebook_size, codec.latent_dim) == (96, 8)
    assert codec.codebook is codec.tokenizer.quantize.embedding.weight
    assert all(k.startswith("tokenizer.") for k in codec.state_dict())


def test_debug_codec_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = debug_image_codec(seed=3), debug_image_codec(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.codebook, b.codebook)


def test_input_forms_give_identical_tokens(codec, pixels, tokens):
    pil = [Image.fromarray(p) for p in pixels]
    as_float = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    for form in (pil, torch.from_numpy(pixels), as_float, as_float.numpy()):
        assert_same_tokens(codec.encode(form), tokens)
    single = codec.encode(pil[1])
    assert torch.equal(single.indices[-1], tokens.indices[-1][1:])


def test_decode_equals_tokenizer_reconstruction(codec, pixels, tokens):
    for with_residual in (True, False):
        ref = codec.tokenizer.decode(tokens, with_residual=with_residual).add(1).mul(0.5)
        out = codec.decode(tokens, with_residual=with_residual)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    # the hybrid reconstruction is the tokenizer's reconstruction of the continuous latent
    f = codec.tokenizer.encode_latent(codec.preprocess(pixels))
    torch.testing.assert_close(codec.fhat(tokens), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(codec.decode(tokens), codec.decode_latent(f), rtol=1e-5, atol=1e-5)


def test_next_scale_loop_rebuilds_latent(codec, tokens):
    """The generation contract: feeding the true codes scale by scale rebuilds f_hat."""
    K, B = codec.num_scales, tokens.batch_size
    f_hat, inputs, cumulative = codec.empty_latent(B), [], []
    assert f_hat.shape == (B, codec.latent_dim, 4, 4) and not f_hat.any()
    for si in range(K):
        codes = codec.codes_to_grid(codec.codebook[tokens.indices[si]], si)
        f_hat, nxt = codec.next_scale_input(si, f_hat, codes)
        if si < K - 1:
            assert nxt.shape == (B, codec.tokens_per_scale[si + 1], codec.latent_dim)
            inputs.append(nxt)
            cumulative.append(f_hat)
        else:
            assert nxt is f_hat
    torch.testing.assert_close(f_hat, codec.fhat(tokens, with_residual=False), rtol=0, atol=0)

    # last scale with codes + residual (what the diffusion head predicts) gives the full latent
    last = codec.codebook[tokens.indices[-1]] + tokens.residual
    full, _ = codec.next_scale_input(K - 1, cumulative[-1], codec.codes_to_grid(last, K - 1))
    torch.testing.assert_close(full, codec.fhat(tokens), rtol=1e-6, atol=1e-6)

    # teacher forcing = the loop's inputs = area-downsampled cumulative latents, row-major
    tf = codec.teacher_forcing_input(tokens.indices)
    assert tf.shape == (B, sum(codec.tokens_per_scale[1:]), codec.latent_dim)
    torch.testing.assert_close(tf, torch.cat(inputs, 1), rtol=0, atol=0)
    down = [F.interpolate(c, size=g, mode="area").flatten(2).transpose(1, 2)
            for c, g in zip(cumulative, codec.grids[1:], strict=True)]
    torch.testing.assert_close(tf, torch.cat(down, 1), rtol=1e-6, atol=1e-6)


def test_latent_token_layouts(codec):
    f = torch.arange(2 * 8 * 16, dtype=torch.float32).reshape(2, 8, 4, 4)
    t = codec.latent_to_tokens(f)
    assert t.shape == (2, 16, 8)
    assert torch.equal(t[:, 1 * 4 + 2], f[:, :, 1, 2])  # row-major: cell (h=1, w=2)
    assert torch.equal(codec.codes_to_grid(t, codec.num_scales - 1), f)
    with pytest.raises(ValueError, match=r"expected \[B, 4, 8\]"):
        codec.codes_to_grid(t, 1)
    with pytest.raises(ValueError, match="latent has shape"):
        codec.latent_to_tokens(f[:, :, :2])
    with pytest.raises(ValueError, match="codes_to_grid"):
        codec.next_scale_input(0, codec.empty_latent(2), t[:, :1])


def test_tokens_from_another_ladder_are_refused(codec, tokens):
    other = debug_image_codec(image_size=32).encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="grids"):
        codec.decode(other)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_wrong_pil_mode(codec, mode):
    with pytest.raises(ValueError, match=rf"mode '{mode}'.*convert\('RGB'\)"):
        codec.encode([Image.new(mode, (16, 16))])


def test_wrong_pil_size(codec):
    with pytest.raises(ValueError, match=r"20x12 \(WxH\).*expects 16x16.*resize"):
        codec.encode([Image.new("RGB", (16, 16)), Image.new("RGB", (20, 12))])


@pytest.mark.parametrize("images, match", [
    (np.zeros((1, 16, 16, 4), np.uint8), r"\[B, H, W, 3\].*4 channels"),
    (np.zeros((1, 16, 16, 1), np.uint8), r"\(1, 16, 16, 1\).*1 channels"),
    (np.zeros((1, 3, 16, 16), np.uint8), "channels-first"),
    (torch.zeros(1, 1, 16, 16), r"\[B, 3, H, W\].*1 channels"),
    (torch.zeros(1, 16, 16, 3), "channels-last"),
    (np.zeros((1, 8, 8, 3), np.uint8), "8x8 .*expects 16x16"),
    (torch.zeros(1, 3, 32, 32), "32x32 .*expects 16x16"),
    (torch.full((1, 3, 16, 16), 255.0), r"in \[-1, 1\]"),
])
def test_bad_arrays(codec, images, match):
    with pytest.raises(ValueError, match=match):
        codec.preprocess(images)


def test_to_pil_round_trip(codec, pixels, tokens):
    images = codec.to_pil(codec.decode(tokens))
    assert [(im.mode, im.size) for im in images] == [("RGB", (16, 16))] * 2
    back = codec.preprocess(images)
    torch.testing.assert_close(back.add(1).div(2), codec.decode(tokens), rtol=0, atol=1 / 255)


def test_save_load_codec_round_trip(codec, pixels, tokens, tmp_path):
    codec.save_pretrained(tmp_path / "img")
    assert (tmp_path / "img" / "codec.json").is_file()
    loaded = load_codec(tmp_path / "img")
    assert type(loaded) is ImageCodec and not loaded.training
    assert_same_tokens(loaded.encode(pixels), tokens)
    state = codec.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert_same_tokens(ImageCodec.from_pretrained(tmp_path / "img").encode(pixels), tokens)


def test_32px_debug_codec():
    codec = debug_image_codec(image_size=32)
    assert codec.image_size == (32, 32) and codec.tokens_per_scale == (1, 4, 16, 64)
    tokens = codec.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    assert codec.decode(tokens).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        debug_image_codec(image_size=64)
