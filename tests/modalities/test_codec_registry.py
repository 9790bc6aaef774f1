import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hart_core.quantizer import MultiScaleResidualQuantizer
from modalities import CODEC_REGISTRY, HybridTokens, ImageCodec, ModalityCodec, load_codec, register_codec
from modalities.base import read_codec_config, write_codec_config


class LatentCodec(ModalityCodec):
    """A 1-D codec whose raw data is the latent itself, as an audio codec would look minus the
    conv encoder: enough to exercise the registry and the 1-D latent arithmetic."""

    codec_type = "test_latent_1d"
    name = "audio"

    def __init__(self, dim: int = 4, grids=((1,), (3,), (6,))):
        super().__init__()
        self.dim, self.grid_list = dim, [list(g) for g in grids]
        self.quant = MultiScaleResidualQuantizer(16, dim, grids)

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.quant

    def encode(self, batch: torch.Tensor) -> HybridTokens:
        return self.quant.encode(batch)

    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        return f_hat

    def save_pretrained(self, folder) -> None:
        write_codec_config(folder, {"codec_type": self.codec_type, "dim": self.dim, "grids": self.grid_list})
        save_file(self.state_dict(), folder / "model.safetensors")

    @classmethod
    def from_pretrained(cls, folder) -> "LatentCodec":
        cfg = read_codec_config(folder)
        codec = cls(cfg["dim"], [tuple(g) for g in cfg["grids"]])
        codec.load_state_dict(load_file(folder / "model.safetensors"))
        return codec


@pytest.fixture
def registered():
    register_codec(LatentCodec)
    yield LatentCodec
    CODEC_REGISTRY.pop(LatentCodec.codec_type)


def test_image_codec_is_registered():
    assert CODEC_REGISTRY["hart_image"] is ImageCodec


def test_custom_codec_round_trip_and_1d_arithmetic(registered, tmp_path):
    codec = LatentCodec()
    assert (codec.ndim, codec.tokens_per_scale, codec.latent_dim, codec.codebook_size) == (1, (1, 3, 6), 4, 16)
    f = torch.randn(2, 4, 6)
    tokens = codec.encode(f)
    torch.testing.assert_close(codec.decode(tokens), f, rtol=1e-5, atol=1e-5)

    f_hat, inputs = codec.empty_latent(2), []
    for si in range(codec.num_scales):
        codes = codec.codes_to_grid(codec.codebook[tokens.indices[si]], si)
        f_hat, nxt = codec.next_scale_input(si, f_hat, codes)
        inputs.append(nxt)
    torch.testing.assert_close(f_hat, codec.fhat(tokens, with_residual=False), rtol=0, atol=0)
    torch.testing.assert_close(codec.teacher_forcing_input(tokens.indices), torch.cat(inputs[:-1], 1),
                               rtol=0, atol=0)
    assert codec.latent_to_tokens(f).shape == (2, 6, 4)

    codec.save_pretrained(tmp_path)
    loaded = load_codec(tmp_path)
    assert type(loaded) is LatentCodec
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(f).indices, tokens.indices, strict=True))


def test_registration_errors(registered):
    register_codec(LatentCodec)  # registering the same class again is a no-op

    class Clash(LatentCodec):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_codec(Clash)

    class Nameless(LatentCodec):
        codec_type = ""

    with pytest.raises(TypeError, match="codec_type"):
        register_codec(Nameless)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such codec folder"):
        load_codec(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no codec.json"):
        load_codec(tmp_path)


def test_unknown_type_and_bad_json(tmp_path):
    (tmp_path / "codec.json").write_text(json.dumps({"codec_type": "hologram"}))
    with pytest.raises(ValueError, match=r"unknown codec_type 'hologram'; known: \[.*'hart_image'"):
        load_codec(tmp_path)
    (tmp_path / "codec.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_codec(tmp_path)
    (tmp_path / "codec.json").write_text("{}")
    with pytest.raises(ValueError, match="codec_type"):
        load_codec(tmp_path)


def test_abstract_interface_cannot_be_instantiated():
    with pytest.raises(TypeError):
        ModalityCodec()
