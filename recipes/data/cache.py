"""Pre-tokenisation cache: image -> `HybridTokens` computed once per sample and codec.

Layout: `folder/<codec fingerprint[:16]>/<sha256(key)[:2]>/<sha256(key)[:40]>.safetensors`, one
file per sample holding `indices.{k}` (int32) and `residual` (the codec's dtype), with the key,
the full codec fingerprint, the grids and a hash of the pixels in the safetensors metadata.

* A changed codec (other weights or config) has another fingerprint, hence another folder: old
  tokens are never read for it (and stay on disk for the old codec).
* An entry is reused only if key, fingerprint and pixels all match, so a changed image or a
  changed resize setting recomputes instead of returning stale tokens.
* Writes are atomic (temporary file in the same folder, then `os.replace`), so ranks sharing a
  folder, or a run killed mid-write, never leave a half-written entry; unreadable entries are
  recomputed.

Tokens are computed with `codec.encode` on the codec's device and stored/returned on the CPU.
`get_many` encodes all misses in one batch; a batch may differ from single-image encoding in
the last bits of the residual, but once stored, an entry is what every later call returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hart_core.quantizer import HybridTokens
from modalities import ModalityCodec

log = logging.getLogger("recipes.data")


def codec_fingerprint(codec: ModalityCodec) -> str:
    """sha256 over the codec's class, config (json) and every weight/buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(codec).__module__}.{type(codec).__qualname__}\n".encode())
    h.update(json.dumps(_codec_config(codec), sort_keys=True, default=str).encode())
    for name, t in sorted(codec.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\n{name}:{t.dtype}:{t.numel()}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _codec_config(codec: ModalityCodec) -> dict:
    config: dict = {"codec_type": getattr(codec, "codec_type", None), "grids": codec.grids}
    for owner in (codec, getattr(codec, "tokenizer", None)):
        cfg = getattr(owner, "config", None)
        if cfg is not None:
            config[type(owner).__name__] = cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg)
    if hasattr(codec, "image_size"):
        config["image_size"] = codec.image_size
    return config


def pixel_hash(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}:{image.size}\n".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _rows(tokens: HybridTokens) -> list[HybridTokens]:
    """A batch of tokens -> one HybridTokens per row (own memory, not views of the batch)."""
    return [HybridTokens([idx[i : i + 1].clone() for idx in tokens.indices],
                         None if tokens.residual is None else tokens.residual[i : i + 1].clone(), tokens.grids)
            for i in range(tokens.batch_size)]


class TokenCache:
    """`get(key, image) -> HybridTokens` (one row), computed with `codec.encode` once and then read
    from `folder`. `hits` / `misses` count lookups."""

    def __init__(self, folder: str | os.PathLike, codec: ModalityCodec, fingerprint: str | None = None):
        self.codec = codec
        self.fingerprint = fingerprint or codec_fingerprint(codec)
        self.root = Path(folder)
        self.folder = self.root / self.fingerprint[:16]
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
        return self.folder / h[:2] / f"{h}.safetensors"

    def get(self, key: str, image: Image.Image) -> HybridTokens:
        return self.get_many([key], [image])[0]

    def get_many(self, keys: Sequence[str], images: Sequence[Image.Image]) -> list[HybridTokens]:
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        out: list[HybridTokens | None] = []
        missing: list[int] = []
        hashes = [pixel_hash(im) for im in images]
        for n, (key, ph) in enumerate(zip(keys, hashes, strict=True)):
            tokens = self._read(key, ph)
            out.append(tokens)
            if tokens is None:
                missing.append(n)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            encoded = _rows(self.codec.encode([images[n] for n in missing]).to("cpu"))
            for n, tokens in zip(missing, encoded, strict=True):
                self._write(keys[n], hashes[n], tokens)
                out[n] = tokens
        return out

    # ------------------------------------------------------------------ files
    def _read(self, key: str, ph: str) -> HybridTokens | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if (meta.get("key"), meta.get("fingerprint"), meta.get("pixels")) != (key, self.fingerprint, ph):
                    return None
                grids = [tuple(g) for g in json.loads(meta["grids"])]
                indices = [f.get_tensor(f"indices.{k}").long() for k in range(len(grids))]
                residual = f.get_tensor("residual") if "residual" in f.keys() else None
            return HybridTokens(indices, residual, grids)
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            log.debug("recomputing unreadable token cache entry %s (%s)", path, e)
            return None

    def _write(self, key: str, ph: str, tokens: HybridTokens) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"indices.{k}": idx.to(torch.int32).contiguous() for k, idx in enumerate(tokens.indices)}
        if tokens.residual is not None:
            tensors["residual"] = tokens.residual.contiguous()
        meta = {"key": key, "fingerprint": self.fingerprint, "pixels": ph,
                "grids": json.dumps([list(g) for g in tokens.grids])}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def __repr__(self) -> str:
        return f"TokenCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"
