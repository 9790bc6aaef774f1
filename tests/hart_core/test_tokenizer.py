import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hart_core.quantizer import HybridTokens, MultiScaleResidualQuantizer
from hart_core.tokenizer import HARTTokenizer, TokenizerConfig


def load_tokenizer(tok_dir: Path) -> HARTTokenizer:
    cfg = TokenizerConfig.from_dict(json.loads((tok_dir / "config.json").read_text()))
    tok = HARTTokenizer(cfg).eval()
    sd = load_file(tok_dir / "model.safetensors")
    # drop the GAN discriminator, strip the HF wrapper prefix
    sd = {k.removeprefix("vae."): v for k, v in sd.items() if k.startswith("vae.")}
    tok.load_state_dict(sd, strict=True)
    return tok


@functools.cache
def _parity_outputs(path: str) -> tuple[dict, dict]:
    d = Path(path)
    tok = load_tokenizer(d / "tokenizer")
    io = load_file(d / "io" / "tokenizer_io.safetensors")
    q = tok.quantize
    out = {}
    with torch.no_grad():
        images = io["images"]
        out["f_BChw"] = tok.encode_latent(images)
        tokens = tok.encode(images)
        for k, idx in enumerate(tokens.indices):
            out[f"idx_{k}"] = idx
        out["residual_target"] = tokens.residual
        out["frest_wo_last_discrete"] = tokens.residual + q.embedding(tokens.indices[-1])
        out["fhat_discrete"] = q.decode_fhat(tokens, with_residual=False)
        out["fhat_hybrid"] = q.decode_fhat(tokens, with_residual=True)
        fhat_var = q.fhat_var(tokens.indices)
        out["fhat_discrete_var"] = fhat_var
        out["img_discrete"] = tok.decode(tokens, with_residual=False)
        out["img_hybrid"] = tok.decode(tokens)
        out["img_discrete_var"] = tok.decode_latent(fhat_var)
        for k, f_hat in enumerate(q.fhat_var(tokens.indices, progressive=True)):
            out[f"img_progressive_var_{k}"] = tok.decode_latent(f_hat)
        out["var_input_BLCv"] = q.teacher_forcing_input(tokens.indices)
        for name, continuous in (("discrete", False), ("hybrid", True)):
            # quantizer alone on the reference latent, then the full training forward
            f_hat, vq_loss, usages, _ = q(io["f_BChw"], continuous=continuous)
            out[f"qforward_{name}_fhat"] = f_hat
            out[f"qforward_{name}_vq_loss"] = vq_loss.reshape(1)
            out[f"qforward_{name}_usages"] = torch.tensor([usages])
            out[f"vae_forward_{name}_out"] = tok(images, continuous=continuous)["out"]
    return out, io


FLOAT_CHECKS = [
    "f_BChw", "fhat_discrete", "fhat_discrete_var", "fhat_hybrid", "frest_wo_last_discrete",
    "residual_target", "img_discrete", "img_discrete_var", "img_hybrid",
    *[f"img_progressive_var_{k}" for k in range(4)],
    *[f"qforward_{m}_{t}" for m in ("discrete", "hybrid") for t in ("fhat", "vq_loss", "usages")],
    "vae_forward_discrete_out", "vae_forward_hybrid_out", "var_input_BLCv",
]


@pytest.mark.parametrize("name", FLOAT_CHECKS)
def test_parity_float(fixture_dir, name):
    out, io = _parity_outputs(str(fixture_dir))
    ours, ref = out[name].float(), io[name].float()
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), f"{name}: max err {err:.3g}"


def test_parity_indices(fixture_dir):
    out, io = _parity_outputs(str(fixture_dir))
    for k in range(4):
        assert out[f"idx_{k}"].dtype == torch.int64
        assert torch.equal(out[f"idx_{k}"], io[f"idx_{k}"]), f"idx_{k}"


def test_checkpoint_keys_match_official(fixture_dir):
    tok = HARTTokenizer(TokenizerConfig.from_dict(
        json.loads((fixture_dir / "tokenizer" / "config.json").read_text())))
    official = {k[4:] for k in load_file(fixture_dir / "tokenizer" / "model.safetensors")
                if k.startswith("vae.")}
    assert set(tok.state_dict()) == official


# ---------------------------------------------------------------- behaviour (no fixtures)

def tiny_tokenizer(**overrides) -> HARTTokenizer:
    cfg = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), v_patch_nums=(1, 2, 4))
    cfg.update(overrides)
    tok = HARTTokenizer(TokenizerConfig(**cfg))
    with torch.no_grad():  # codebook on the latent's scale so several codes get used
        f = tok.encode_latent(torch.rand(4, 3, 8, 8) * 2 - 1)
        tok.quantize.embedding.weight.normal_(0, 0.5 * f.std().item())
    return tok


def test_hybrid_decode_is_exact_latent_decode():
    tok = tiny_tokenizer().eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        tokens = tok.encode(x)
        f = tok.encode_latent(x)
        assert torch.allclose(tok.quantize.decode_fhat(tokens), f, atol=1e-5)
        assert torch.allclose(tok.decode(tokens), tok.decode_latent(f), atol=1e-5)
        # without the residual the reconstruction must actually differ (residual is not ~0)
        assert not torch.allclose(tok.quantize.decode_fhat(tokens, with_residual=False), f,
                                  atol=1e-3)


def test_encoding_with_errors_corrects_them_in_later_scales():
    """Self-correction targets: inputs carry errors at a rate ~p (never at the last scale), labels are each
    scale's choice given the errors before it, and inputs + residual still sum to the latent."""
    q = tiny_tokenizer().quantize
    f = torch.randn(256, 8, 4, 4)
    clean = q.encode(f)
    same, inputs = q.encode_correcting(f, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(same.indices, clean.indices, strict=True))
    assert torch.equal(same.residual, clean.residual) and inputs == same.indices

    labels, inputs = q.encode_correcting(f, 0.3, torch.Generator().manual_seed(0))
    again, inputs_again = q.encode_correcting(f, 0.3, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(inputs, inputs_again, strict=True))  # seeded
    assert torch.equal(labels.indices[0], clean.indices[0])  # nothing before scale 0 to correct
    rates = [(a != b).float().mean().item() for a, b in zip(inputs, labels.indices, strict=True)]
    assert all(0.2 < r < 0.4 for r in rates[:-1]) and rates[-1] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(labels.indices[1:], clean.indices[1:], strict=True))
    as_read = HybridTokens(inputs, labels.residual, labels.grids)
    torch.testing.assert_close(q.decode_fhat(as_read), f, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="error_p"):
        q.encode_correcting(f, 1.0)


def test_hybrid_and_var_semantics_differ_only_by_last_phi():
    q = tiny_tokenizer().quantize
    f = torch.randn(2, 8, 4, 4)
    tokens = q.encode(f)
    e_last = q._codes(tokens.indices[-1], (4, 4))
    hart = q.decode_fhat(tokens, with_residual=False)
    var = q.fhat_var(tokens.indices)
    assert torch.allclose(var - q.phi(2, e_last), hart - e_last, atol=1e-6)
    assert not torch.allclose(var, hart, atol=1e-4)


def test_frozen_like_official_then_gradients_flow():
    tok = tiny_tokenizer()
    # official var_hybrid construction freezes encoder, quant_conv and quantizer
    assert not any(p.requires_grad for p in tok.encoder.parameters())
    assert not tok.quantize.embedding.weight.requires_grad
    assert all(p.requires_grad for p in tok.decoder.parameters())

    tok.requires_grad_(True).train()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    # reconstruction path: straight-through to the encoder, nothing to the codebook
    tok(x, continuous=False)["out"].square().sum().backward()
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.quant_conv.weight.grad.abs().sum() > 0
    assert tok.quantize.embedding.weight.grad is None
    tok.zero_grad(set_to_none=True)
    # VQ loss: codebook and phi convs (commitment term also reaches the encoder)
    res = tok.loss(x, continuous=False)
    res["vq"].backward()
    assert tok.quantize.embedding.weight.grad.abs().sum() > 0
    assert tok.quantize.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert set(res) == {"loss", "recon", "vq", "out", "usages", "indices"}
    assert [i.shape[1] for i in res["indices"]] == [p * p for p in tok.config.v_patch_nums]
    assert 0 < res["usages"] <= 100


def test_continuous_forward_reconstructs_latent():
    tok = tiny_tokenizer().eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        f = tok.encode_latent(x)
        f_hat, _, _, indices = tok.quantize(f, continuous=True)
        assert torch.allclose(f_hat, f, atol=1e-5)
        f_disc, *_ = tok.quantize(f, continuous=False)
        assert torch.allclose(f_disc, tok.quantize.fhat_var(indices), atol=1e-5)
        out = tok(x, continuous=True)["out"]
        assert torch.allclose(out, tok.decoder(tok.post_quant_conv(f)), atol=1e-5)


def test_wrong_image_size_raises():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="expected"):
        tok.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expected"):
        tok.encode_latent(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="expected"):
        tok.encode_latent(torch.zeros(3, 8, 8))


def test_next_scale_input_is_not_in_place():
    q = tiny_tokenizer().quantize
    f_hat = torch.zeros(2, 8, 4, 4)
    h = q._codes(torch.zeros(2, 4, dtype=torch.long), (2, 2))
    new, nxt = q.next_scale_input(1, f_hat, h)
    assert f_hat.abs().sum() == 0 and new.abs().sum() > 0
    assert nxt.shape == (2, 16, 8)
    last, last2 = q.next_scale_input(2, new, q._codes(torch.zeros(2, 16, dtype=torch.long),
                                                        (4, 4)))
    assert last is last2


# ---------------------------------------------------------------- 1-D latents

def _cubic_up_reference(x: np.ndarray, out_len: int, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution, align_corners=False, border-replicated (PyTorch's bicubic)."""
    n = x.shape[-1]
    scale = n / out_len
    y = np.zeros(x.shape[:-1] + (out_len,))
    for j in range(out_len):
        src = (j + 0.5) * scale - 0.5
        i0 = math.floor(src)
        t = src - i0
        for m, dist in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t), strict=True):
            d = abs(dist)
            if d <= 1:
                w = ((a + 2) * d - (a + 3)) * d * d + 1
            else:
                w = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            y[..., j] += w * x[..., min(max(i0 + m, 0), n - 1)]
    return y


def test_1d_bicubic_is_exact_cubic_along_length():
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    ours = MultiScaleResidualQuantizer._up(x, (13,))
    ref = _cubic_up_reference(x.numpy(), 13)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


def test_1d_quantizer_roundtrip_and_shapes():
    grids = [(1,), (3,), (6,), (10,)]
    q = MultiScaleResidualQuantizer(32, 8, grids)
    assert isinstance(q.quant_resi.qresi_ls[0], torch.nn.Conv1d)
    f = torch.randn(2, 8, 10)
    tokens = q.encode(f)
    assert [tuple(i.shape) for i in tokens.indices] == [(2, 1), (2, 3), (2, 6), (2, 10)]
    assert tokens.residual.shape == (2, 10, 8) and tokens.grids == tuple(grids)
    assert torch.allclose(q.decode_fhat(tokens, with_residual=True), f, atol=1e-5)
    assert q.teacher_forcing_input(tokens.indices).shape == (2, 3 + 6 + 10, 8)
    assert len(q.fhat_var(tokens.indices, progressive=True)) == 4
    f_hat, vq_loss, _, idx = q(f, continuous=True)
    assert torch.allclose(f_hat, f, atol=1e-5) and vq_loss.ndim == 0
    assert [tuple(i.shape) for i in idx] == [(2, 1), (2, 3), (2, 6), (2, 10)]


def test_1d_quantizer_equals_2d_on_height_one_grids():
    grids = [(1,), (3,), (6,), (10,)]
    q1 = MultiScaleResidualQuantizer(32, 8, grids)
    q2 = MultiScaleResidualQuantizer(32, 8, [(1, g[0]) for g in grids])
    with torch.no_grad():
        q2.embedding.weight.copy_(q1.embedding.weight)
        for c1, c2 in zip(q1.quant_resi.qresi_ls, q2.quant_resi.qresi_ls, strict=True):
            # on a height-1 map with zero padding only the middle kernel row sees data
            c2.weight.zero_()[:, :, 1, :] = c1.weight
            c2.bias.copy_(c1.bias)
    f = torch.randn(2, 8, 10)
    t1, t2 = q1.encode(f), q2.encode(f.unsqueeze(2))
    assert all(torch.equal(a, b) for a, b in zip(t1.indices, t2.indices, strict=True))
    assert torch.allclose(t1.residual, t2.residual, atol=1e-6)
    assert torch.allclose(q1.teacher_forcing_input(t1.indices),
                          q2.teacher_forcing_input(t2.indices), atol=1e-6)


# ---------------------------------------------------------------- config / structure

def test_phi_schedule_matches_official_ticks():
    q = MultiScaleResidualQuantizer(16, 4, [1, 2, 3, 4])
    assert [q.phi_index(s) for s in range(4)] == [0, 1, 2, 3]
    # SN=10: si=2 and si=7 are exact real-number ties, broken by float64 rounding as upstream
    q = MultiScaleResidualQuantizer(16, 4, [1, 2, 3, 4, 5, 6, 8, 10, 13, 16])
    assert [q.phi_index(s) for s in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("share,keys", [
    (0, {"quant_resi.0.weight", "quant_resi.2.bias"}),
    (1, {"quant_resi.qresi.weight", "quant_resi.qresi.bias"}),
    (2, {"quant_resi.qresi_ls.0.weight", "quant_resi.qresi_ls.1.bias"}),
])
def test_phi_sharing_key_names(share, keys):
    q = MultiScaleResidualQuantizer(16, 4, [1, 2, 3], share_quant_resi=share)
    names = set(q.state_dict())
    assert keys <= names and "ema_vocab_hit_SV" in names and "embedding.weight" in names
    n_phi = {0: 3, 1: 1, 2: 2}[share]
    assert sum(k.endswith("weight") and "quant_resi" in k for k in names) == n_phi


def test_zero_quant_resi_means_identity_phi():
    q = MultiScaleResidualQuantizer(16, 4, [1, 2, 3], quant_resi=0.0)
    assert not any("quant_resi" in k for k in q.state_dict())
    h = torch.randn(1, 4, 3, 3)
    assert q.phi(0, h) is h


def test_ema_buffer_with_other_scale_count_loads():
    q = MultiScaleResidualQuantizer(16, 4, [1, 2, 3, 4])
    sd = q.state_dict()
    sd["ema_vocab_hit_SV"] = torch.ones(10, 16)
    q.load_state_dict(sd, strict=True)
    assert q.ema_vocab_hit_SV.shape == (4, 16)


def test_config_from_dict_and_validation():
    d = {"architectures": ["HARTAutoEncoderWithDisc"], "levels": [8, 8], "vocab_size": 96,
         "transformers_version": "4.42.2", "ch_mult": [1, 2, 1], "v_patch_nums": [1, 2, 4],
         "quantizer_type": "var_hybrid", "model_type": "hart_autoencoder_with_disc"}
    cfg = TokenizerConfig.from_dict(d)
    assert cfg.ch_mult == (1, 2, 1) and cfg.grids == ((1, 1), (2, 2), (4, 4))
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())
    for bad in ({"quantizer_type": "fsq"}, {"using_znorm": True}, {"double_decoder": True}):
        with pytest.raises(ValueError):
            TokenizerConfig.from_dict({**d, **bad})


def test_hybrid_tokens_helpers():
    t = HybridTokens([torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long)],
                     torch.zeros(3, 4, 8), ((1, 1), (2, 2)))
    assert t.batch_size == 3 and t.num_scales == 2
    assert t.to("cpu").residual.shape == (3, 4, 8)
    with pytest.raises(ValueError):
        HybridTokens([torch.zeros(3, 2, dtype=torch.long)], None, ((1, 1),))


def test_attention_switches(tmp_path):
    """using_sa / using_mid_sa default to HART's layout (attention at the lowest resolution and in the middle);
    off, the encoder and decoder hold no attention at all, and the folder round-trips with the switches."""
    from hart_core.vae import AttnBlock

    small = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2), v_patch_nums=(1, 2, 4), quantizer_type="var")
    with_attn = HARTTokenizer(TokenizerConfig(**small))
    assert sum(isinstance(m, AttnBlock) for m in with_attn.modules()) == 2 + 1 + 3 + 1
    for sa, mid_sa, count in ((False, True, 2), (True, False, 5), (False, False, 0)):
        tok = HARTTokenizer(TokenizerConfig(**small, using_sa=sa, using_mid_sa=mid_sa))
        assert sum(isinstance(m, AttnBlock) for m in tok.modules()) == count
    local = HARTTokenizer(TokenizerConfig(**small, using_sa=False, using_mid_sa=False)).eval()
    assert not any("attn" in k for k in local.state_dict())
    local.save_pretrained(tmp_path / "tok")
    again = HARTTokenizer.from_pretrained(tmp_path / "tok")
    assert again.config.using_sa is False and again.config.using_mid_sa is False
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(again.decode(again.encode(images)), local.decode(local.encode(images)),
                               rtol=0, atol=0)


def test_channel_norm_without_attention_keeps_the_latent_local():
    """With norm="channel" and no attention, a latent position depends only on the pixels its convolutions
    reach (53 px here): redrawing the far corner leaves the top-left latent bit-identical. HART's GroupNorm shares
    statistics across positions, so the same edit moves it."""
    torch.manual_seed(0)
    small = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2), v_patch_nums=(4, 32), quantizer_type="var",
                 using_sa=False, using_mid_sa=False)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    edited = images.clone()
    edited[..., 60:, 60:] = -images[..., 60:, 60:]
    for norm, local in (("channel", True), ("group", False)):
        tok = HARTTokenizer(TokenizerConfig(**small, norm=norm)).eval()
        with torch.no_grad():
            a, b = tok.encode_latent(images)[..., :2, :2], tok.encode_latent(edited)[..., :2, :2]
        assert torch.equal(a, b) == local, norm
    with pytest.raises(ValueError, match="norm"):
        TokenizerConfig(**small, norm="batch")
