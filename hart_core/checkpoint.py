"""Reading and writing weights: released HART folders and this project's `save_pretrained` folders.

Loading never executes pickled code: safetensors first, `.bin` files only through
`torch.load(weights_only=True)` (`safe_torch_load`, the one place a pickle is read). Loaded weights must
be finite, and a folder that carries `weights.sha256` (written by `save_folder`) must match it, so a
damaged file is refused instead of drawing black images. Saving is atomic (write a temporary folder,
then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
T = TypeVar("T")
CHECKSUM_NAME = "weights.sha256"  # `sha256sum -c` format: "<hex>  <file name>" per weights file


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says what is wrong."""


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (is this a model folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def check_model_type(folder: str | os.PathLike, model_type: str, hint: str = "") -> dict:
    """The folder's config.json, after checking it names `model_type` (and that the folder exists)."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    cfg = read_config(folder)
    if not isinstance(cfg, dict) or cfg.get("model_type") != model_type:
        found = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{folder}: model_type {found!r} is not {model_type!r}" + (f"; {hint}" if hint else ""))
    return cfg


# captured at import: `safe_torch_load` is what a patched `torch.load` forwards to (recipes.checkpoints)
_torch_load = torch.load


def safe_torch_load(path: str | os.PathLike | Any, allowed: Iterable[type] = (), mmap: bool = False,
                    map_location: Any = "cpu") -> Any:
    """`torch.load` that can never run pickled code: weights_only=True, plus the few plain classes in
    `allowed` (rebuilt from their state, never called). A file that would need anything else is a
    CheckpointError saying so, as is an unreadable one. `mmap` maps the tensors instead of reading them."""
    name = str(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    if mmap and isinstance(path, (str, os.PathLike)) and not zipfile.is_zipfile(path):
        mmap = False  # only torch.save's zip format maps; a legacy pickle must reach the unpickler to be judged
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{name}: not a readable PyTorch checkpoint ({e})") from e
        raise CheckpointError(
            f"{name}: refusing to load: the file holds pickled objects other than tensors, and "
            "loading it would execute code. Convert it to safetensors in a trusted environment."
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{name}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
                                              "dict": (dict,), "list": (list,)}


def check_field_types(config: Any) -> None:
    """TypeError unless every field of a config dataclass (and of the dataclasses it holds) has its
    annotated simple type (int, float, str, bool, dict, list; or None where optional): a config.json
    with `"max_length": "long"` must fail on load, not deep inside generation."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        kinds = [k for k in kinds if k != "None"]
        if len(kinds) == 1 and kinds[0] in _SIMPLE_TYPES:
            wanted = _SIMPLE_TYPES[kinds[0]]
            if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
                raise TypeError(f"{f.name} must be {kinds[0]}, got {value!r}")
        for item in value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_field_types(item)


def build_config(make: Callable[[dict], T], d: dict, folder: str | os.PathLike) -> T:
    """`make(d)` (a config's from_dict) with its fields type-checked; a wrong type, an unknown or missing
    key is one CheckpointError naming the folder's config.json."""
    try:
        config = make(d)
        check_field_types(config)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{Path(folder) / CONFIG_NAME}: {e}") from None
    return config


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str | os.PathLike, names: Iterable[str], checksum_name: str = CHECKSUM_NAME) -> Path:
    """`weights.sha256` (or `checksum_name`) beside the files it covers, so a damaged copy is refused on load."""
    folder = Path(folder)
    lines = [f"{file_sha256(folder / n)}  {n}\n" for n in sorted(names)]
    (folder / checksum_name).write_text("".join(lines))
    return folder / checksum_name


def verify_checksums(folder: str | os.PathLike, checksum_name: str = CHECKSUM_NAME) -> bool:
    """Check the folder's files against its `weights.sha256` (or `checksum_name`); False when there is
    no such file, so nothing to check (the released HART folders carry none)."""
    folder = Path(folder)
    path = folder / checksum_name
    if not path.is_file():
        return False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        target = (folder / name.strip()).resolve()
        if not name.strip() or not target.is_relative_to(folder.resolve()):
            raise CheckpointError(f"{path}: malformed line {line!r}")
        if not target.is_file():
            raise CheckpointError(f"{folder}: {name.strip()} is listed in {checksum_name} but missing")
        if file_sha256(target) != digest.strip().lower():
            raise CheckpointError(f"{target}: damaged: its SHA-256 does not match {checksum_name} "
                                  "(copy the folder again)")
    return True


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or Inf: they load silently and produce black images or empty captions."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f", ... ({len(bad)} in all)" if len(bad) > 4 else ""
        raise CheckpointError(f"{source}: non-finite weights (NaN or Inf) in {', '.join(bad[:4])}{more}; "
                              "the model diverged in training or the file is damaged")


def read_weights(folder: str | os.PathLike, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """State dict of a model folder: `ema_model.bin` (if preferred and present), else `*.safetensors`
    (sharded or not), else `*.bin`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory")
    verify_checksums(folder)
    ema = folder / "ema_model.bin"
    if prefer_ema and ema.is_file():
        return _load_bin(ema)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            try:
                state.update(load_file(shard))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{shard}: not a readable safetensors file ({e})") from e
        return state
    bins = sorted(p for p in folder.glob("*.bin") if p.name != "ema_model.bin") or ([ema] if ema.is_file() else [])
    if bins:
        state = {}
        for b in bins:
            state.update(_load_bin(b))
        return state
    raise CheckpointError(f"{folder}: no weights found (*.safetensors, *.bin or ema_model.bin)")


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict(strict=True) with one readable error listing missing, unexpected and
    mis-shaped keys; the parameters must be finite (structural buffers such as masks may hold -inf)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or mismatched:
        def show(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {show(mismatched)}")
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))
    params = {k for k, _ in module.named_parameters()}
    check_finite({k: v for k, v in state.items() if k in params}, source)
    module.load_state_dict(state, strict=True)


def save_folder(folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors (+ its weights.sha256) atomically: a crash leaves the old
    folder intact. Non-finite weights are refused, so a diverged model is never saved as a result."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        check_finite(tensors, str(folder))
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        write_checksums(tmp, [WEIGHTS_NAME])
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -- official key layouts ----------------------------------------------------------------------


def official_tokenizer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`HARTAutoEncoderWithDisc` keys -> ours: drop the `vae.` prefix and the GAN discriminator."""
    if any(k.startswith("vae.") for k in state):
        return {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    return {k: v for k, v in state.items() if not k.startswith("disc.")}


_TRANSFORMER_DROPPED = ("attn_bias_for_masking", "lvl_1L")


def official_transformer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`HARTForT2I` keys -> ours: drop structural buffers (mask, level ids, the constant zero K
    bias) and rename the diffusion head."""
    out = {}
    for k, v in state.items():
        if k in _TRANSFORMER_DROPPED or k.endswith(".zero_k_bias"):
            continue
        if k.startswith("diffloss."):
            k = "diffusion_head." + k[len("diffloss."):]
        out[k] = v
    return out
