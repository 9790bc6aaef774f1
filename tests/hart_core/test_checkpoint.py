"""Checkpoint folders: bad input gives clear errors, pickles never run code, saving is atomic."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hart_core import checkpoint
from hart_core.checkpoint import CheckpointError, read_config, read_weights, save_folder
from hart_core.pipeline import HARTPipeline
from hart_core.tokenizer import HARTTokenizer
from hart_core.transformer import HARTTransformer
from tests.conftest import copy_official


@pytest.fixture
def hart(tmp_path) -> Path:
    return copy_official(tmp_path / "hart")


def _llm_state(hart: Path) -> dict[str, torch.Tensor]:
    return load_file(hart / "llm" / "model.safetensors")


def _rewrite_llm(hart: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(state, hart / "llm" / "model.safetensors")


def _assert_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(own[k], v), k


class _WritesMarker:
    """Unpickling this object opens (creates) a file: a stand-in for arbitrary code execution."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- key / shape mismatches ----------------------------------------------------------------------


def test_missing_key_is_named(hart):
    state = _llm_state(hart)
    del state["blocks.0.attn.proj.weight"]
    _rewrite_llm(hart, state)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0\.attn\.proj\.weight") as err:
        HARTTransformer.from_official(hart / "llm")
    assert "unexpected" not in str(err.value) and "shape" not in str(err.value)
    assert str(hart / "llm") in str(err.value)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.proj\.weight"):
        HARTPipeline.from_official(hart)


def test_many_missing_keys_are_summarised(hart):
    state = _llm_state(hart)
    dropped = [k for k in state if k.startswith("blocks.1.")]
    for k in dropped:
        del state[k]
    _rewrite_llm(hart, state)
    n_missing = sum(not k.endswith(".zero_k_bias") for k in dropped)  # a constant buffer, not loaded
    assert n_missing > 8
    with pytest.raises(CheckpointError, match=rf"\.\.\. \({n_missing} in all\)"):
        HARTTransformer.from_official(hart / "llm")


def test_missing_tokenizer_key_is_named(hart):
    state = load_file(hart / "tokenizer" / "model.safetensors")
    del state["vae.quant_conv.weight"]
    save_file(state, hart / "tokenizer" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: quant_conv\.weight"):
        HARTTokenizer.from_official(hart / "tokenizer")


def test_extra_key_is_named(hart):
    state = _llm_state(hart)
    state["blocks.0.attn.surprise"] = torch.zeros(3)
    _rewrite_llm(hart, state)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.0\.attn\.surprise") as err:
        HARTTransformer.from_official(hart / "llm")
    assert "missing" not in str(err.value)


def test_wrong_shape_is_named(hart):
    state = _llm_state(hart)
    assert state["blocks.0.attn.proj.weight"].shape == (64, 64)
    state["blocks.0.attn.proj.weight"] = torch.zeros(64, 63)
    _rewrite_llm(hart, state)
    expected = r"shape mismatches: blocks\.0\.attn\.proj\.weight: checkpoint \(64, 63\) vs model \(64, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        HARTTransformer.from_official(hart / "llm")


# -- missing / broken files ----------------------------------------------------------------------


def test_no_config(hart):
    (hart / "llm" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        HARTTransformer.from_official(hart / "llm")
    with pytest.raises(CheckpointError, match="no config.json"):
        HARTPipeline.from_official(hart)


def test_invalid_config_json(hart):
    (hart / "tokenizer" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        HARTTokenizer.from_official(hart / "tokenizer")


def test_no_weights(hart):
    (hart / "llm" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        HARTTransformer.from_official(hart / "llm")
    with pytest.raises(CheckpointError, match="not a directory"):
        read_weights(hart / "nowhere")


# -- pickles -------------------------------------------------------------------------------------


def test_marker_payload_is_live(tmp_path):
    """Control: the payload really runs code when unpickled without restrictions, so the refusal
    tests below are meaningful."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps({"w": _WritesMarker(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "ema_model.bin"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused(hart, tmp_path, name, writer):
    marker = tmp_path / "pwned"
    payload = {"blocks.0.attn.proj.weight": torch.zeros(2), "evil": _WritesMarker(marker)}
    (hart / "llm" / "model.safetensors").unlink()
    path = hart / "llm" / name
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match="execute code") as err:
        HARTTransformer.from_official(hart / "llm")
    assert name in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        HARTPipeline.from_official(hart)
    assert not marker.exists()


def test_weights_only_bin_loads(hart):
    reference = HARTTransformer.from_official(hart / "llm").state_dict()
    state = _llm_state(hart)
    (hart / "llm" / "model.safetensors").unlink()
    torch.save(state, hart / "llm" / "pytorch_model.bin")
    _assert_state(HARTTransformer.from_official(hart / "llm"), reference)
    # a {"state_dict": ...} wrapper is unwrapped
    torch.save({"state_dict": state}, hart / "llm" / "pytorch_model.bin")
    _assert_state(HARTTransformer.from_official(hart / "llm"), reference)


def test_truncated_bin_is_a_checkpoint_error(hart):
    state = _llm_state(hart)
    (hart / "llm" / "model.safetensors").unlink()
    path = hart / "llm" / "pytorch_model.bin"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        HARTTransformer.from_official(hart / "llm")


def test_corrupt_safetensors_is_a_checkpoint_error(hart):
    (hart / "llm" / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        HARTTransformer.from_official(hart / "llm")


def test_bin_that_is_not_a_state_dict(hart):
    (hart / "llm" / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], hart / "llm" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="dict of tensors"):
        HARTTransformer.from_official(hart / "llm")


def test_ema_preferred(hart):
    state = _llm_state(hart)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(ema, hart / "llm" / "ema_model.bin")
    plain = HARTTransformer.from_official(hart / "llm", prefer_ema=False).state_dict()
    from_ema = HARTTransformer.from_official(hart / "llm").state_dict()  # default: prefer EMA
    key = "blocks.0.attn.proj.weight"
    assert torch.equal(plain[key], state[key])
    assert torch.equal(from_ema[key], state[key] + 1)
    assert torch.equal(from_ema["diffusion_head.net.cond_embed.weight"], state["diffloss.net.cond_embed.weight"] + 1)
    assert torch.equal(HARTPipeline.from_official(hart).transformer.state_dict()[key], state[key] + 1)
    # the direct reader agrees
    assert torch.equal(read_weights(hart / "llm")[key], state[key] + 1)
    assert torch.equal(read_weights(hart / "llm", prefer_ema=False)[key], state[key])


def test_ema_only_folder(hart):
    state = _llm_state(hart)
    (hart / "llm" / "model.safetensors").unlink()
    torch.save(state, hart / "llm" / "ema_model.bin")
    read = read_weights(hart / "llm", prefer_ema=False)  # no other weights: EMA is the fallback
    assert read.keys() == state.keys()


# -- layouts -------------------------------------------------------------------------------------


def test_from_pretrained_on_official_folder_points_to_from_official(hart):
    with pytest.raises(CheckpointError, match=r"HARTTransformer\.from_official"):
        HARTTransformer.from_pretrained(hart / "llm")
    with pytest.raises(CheckpointError, match=r"HARTTokenizer\.from_official"):
        HARTTokenizer.from_pretrained(hart / "tokenizer")


def test_from_pretrained_checks_keys(hart, tmp_path):
    HARTPipeline.from_official(hart).save_pretrained(tmp_path / "conv")
    weights = tmp_path / "conv" / "transformer" / "model.safetensors"
    state = load_file(weights)
    state.pop("head.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):  # rewritten behind its checksum
        HARTPipeline.from_pretrained(tmp_path / "conv")
    (weights.parent / checkpoint.CHECKSUM_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"missing keys: head\.weight"):
        HARTPipeline.from_pretrained(tmp_path / "conv")


# -- atomic saving -------------------------------------------------------------------------------


def _folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_save_folder_writes_and_overwrites(tmp_path):
    folder = tmp_path / "model"
    save_folder(folder, {"a": 1}, {"w": torch.arange(4.0)})
    assert read_config(folder) == {"a": 1}
    assert torch.equal(read_weights(folder)["w"], torch.arange(4.0))
    save_folder(folder, {"a": 2}, {"v": torch.ones(2, 3)})
    assert read_config(folder) == {"a": 2}
    assert read_weights(folder).keys() == {"v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or .old folder left


def test_save_folder_failure_keeps_previous(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    save_folder(folder, {"a": 1}, {"w": torch.arange(4.0)})
    before = _folder_snapshot(folder)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_folder(folder, {"a": 2}, {"w": torch.zeros(4)})
    assert _folder_snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # a fresh target that fails is not created at all
    with pytest.raises(OSError, match="disk full"):
        save_folder(tmp_path / "fresh", {"a": 3}, {"w": torch.zeros(4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_folder_bad_state_keeps_previous(tmp_path):
    folder = tmp_path / "model"
    save_folder(folder, {"a": 1}, {"w": torch.arange(4.0)})
    before = _folder_snapshot(folder)
    with pytest.raises(AttributeError):
        save_folder(folder, {"a": 2}, {"w": torch.zeros(4), "bad": 3})
    assert _folder_snapshot(folder) == before
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_pipeline_save_failure_keeps_previous(hart, tmp_path, monkeypatch):
    pipe = HARTPipeline.from_official(hart)
    pipe.save_pretrained(tmp_path / "conv")
    before = {sub: _folder_snapshot(tmp_path / "conv" / sub) for sub in ("tokenizer", "transformer")}
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(1)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save_file)
    with pytest.raises(OSError):
        pipe.save_pretrained(tmp_path / "conv")
    assert {sub: _folder_snapshot(tmp_path / "conv" / sub) for sub in before} == before
    monkeypatch.undo()
    HARTPipeline.from_pretrained(tmp_path / "conv")  # still loadable


# -- damaged and non-finite weights (issue 12, item 3) --------------------------------------------


def _flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10  # inside the last tensor's bytes: the header still parses
    path.write_bytes(bytes(data))


def test_save_folder_writes_a_checksum_that_is_verified(tmp_path):
    folder = tmp_path / "model"
    save_folder(folder, {"a": 1}, {"w": torch.arange(4.0)})
    assert (folder / checkpoint.CHECKSUM_NAME).read_text().endswith("  model.safetensors\n")
    _flip_one_bit(folder / "model.safetensors")
    load_file(folder / "model.safetensors")  # the flipped file still parses: only the checksum sees it
    with pytest.raises(CheckpointError, match="damaged"):
        read_weights(folder)


def test_bit_flipped_model_is_refused(hart, tmp_path):
    HARTPipeline.from_official(hart).save_pretrained(tmp_path / "conv")
    HARTTransformer.from_pretrained(tmp_path / "conv" / "transformer")  # intact: loads
    _flip_one_bit(tmp_path / "conv" / "transformer" / "model.safetensors")
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        HARTPipeline.from_pretrained(tmp_path / "conv")


def test_a_folder_without_checksum_still_loads(hart):
    assert not (hart / "llm" / checkpoint.CHECKSUM_NAME).exists()  # the released layout carries none
    HARTTransformer.from_official(hart / "llm")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(hart, bad):
    state = _llm_state(hart)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[name] = torch.full_like(state[name], bad)
    _rewrite_llm(hart, state)
    with pytest.raises(CheckpointError, match=f"non-finite weights.*{name}"):
        HARTTransformer.from_official(hart / "llm")


def test_non_finite_weights_are_never_saved(tmp_path):
    folder = tmp_path / "model"
    save_folder(folder, {"a": 1}, {"w": torch.arange(4.0)})
    with pytest.raises(CheckpointError, match="non-finite"):
        save_folder(folder, {"a": 2}, {"w": torch.tensor([1.0, float("nan")])})
    assert torch.equal(read_weights(folder)["w"], torch.arange(4.0))


def test_shipped_model_folders_carry_checksums():
    from recipes.cli import DEFAULT_MODEL

    for folder in (DEFAULT_MODEL, DEFAULT_MODEL / "codecs" / "image" / "tokenizer"):
        checkpoint.verify_checksums(folder)
        assert (folder / checkpoint.CHECKSUM_NAME).is_file()
