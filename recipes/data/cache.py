"""Pre-tokenisation cache: an item -> `HybridTokens` (its segments as rows), computed once per item and codec.

Layout: `folder/<codec fingerprint[:16]>/<digest[:2]>/<digest[:40]>.safetensors`, one file per item
holding `indices.{k}` (int32) and `residual` (the codec's dtype), with the digest, the full codec
fingerprint and the grids in the safetensors metadata. The digest (`recipes.data.decode.raw_digest`)
hashes the sample's raw bytes and the decode settings (an image's size and resize mode), so the cache
works the same for every modality and never hashes decoded pixels.

* A changed codec (other weights or config) has another fingerprint, hence another folder: old
  tokens are never read for it (and stay on disk for the old codec).
* An entry is reused only if its digest and fingerprint match, so changed bytes or a changed
  resize setting recompute instead of returning stale tokens.
* Writes are atomic (temporary file in the same folder, then `os.replace`), so ranks sharing a
  folder, or a run killed mid-write, never leave a half-written entry; unreadable entries are
  recomputed.

Tokens are computed with the codec's `encode_items` on its device and stored/returned on the CPU.
`get_many` encodes all misses in one batch; a batch may differ from single-item encoding in
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
from typing import Any

import torch
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


class TokenCache:
    """`get(item, digest) -> HybridTokens` (the item's segments as rows), computed with the codec of the
    item's modality once and then read from `folder`. `hits` / `misses` count lookups."""

    def __init__(self, folder: str | os.PathLike, codec: ModalityCodec, fingerprint: str | None = None):
        self.codec = codec
        self.fingerprint = fingerprint or codec_fingerprint(codec)
        self.root = Path(folder)
        self.folder = self.root / self.fingerprint[:16]
        self.hits = 0
        self.misses = 0

    @property
    def modality(self) -> str:
        return self.codec.name

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest[:40]}.safetensors"

    def get(self, item: Any, digest: str) -> HybridTokens:
        return self.get_many([item], [digest])[0]

    def get_many(self, items: Sequence[Any], digests: Sequence[str]) -> list[HybridTokens]:
        """Tokens of every item; the misses are encoded in one batch, an item repeated in it once."""
        if len(items) != len(digests):
            raise ValueError(f"{len(items)} items for {len(digests)} digests")
        found = {d: self._read(d) for d in dict.fromkeys(digests)}
        missing = [d for d, tokens in found.items() if tokens is None]
        self.misses += len(missing)
        self.hits += len(digests) - len(missing)
        if missing:
            first = {d: n for n, d in reversed(list(enumerate(digests)))}
            for d, tokens in zip(missing, self.codec.encode_items([items[first[d]] for d in missing]), strict=True):
                found[d] = tokens.to("cpu")
                self._write(d, found[d])
        return [found[d] for d in digests]

    # ------------------------------------------------------------------ files
    def _read(self, digest: str) -> HybridTokens | None:
        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if (meta.get("digest"), meta.get("fingerprint")) != (digest, self.fingerprint):
                    return None
                grids = [tuple(g) for g in json.loads(meta["grids"])]
                indices = [f.get_tensor(f"indices.{k}").long() for k in range(len(grids))]
                residual = f.get_tensor("residual") if "residual" in f.keys() else None
            return HybridTokens(indices, residual, grids)
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            log.debug("recomputing unreadable token cache entry %s (%s)", path, e)
            return None

    def _write(self, digest: str, tokens: HybridTokens) -> None:
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"indices.{k}": idx.to(torch.int32).contiguous() for k, idx in enumerate(tokens.indices)}
        if tokens.residual is not None:
            tensors["residual"] = tokens.residual.contiguous()
        meta = {"digest": digest, "fingerprint": self.fingerprint,
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
