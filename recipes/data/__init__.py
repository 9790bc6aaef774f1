"""The trainer's data layer: indexed readers, deterministic rank-independent batches, bad-sample
accounting and a token cache.

    source = open_source("data/shard-{000..099}.tar")        # or "manifest.jsonl", or {"mix": [...]}
    loader = GlobalBatchLoader(source, global_batch=256, micro_batch=8, seed=0, image_size=256)
    for j, samples in loader.micro_batches(step, rank, world_size): ...

See `loader.py` for the batch contract, `sources.py` for the formats, `decode.py` for what a
sample is, what makes one bad and the decoders registered by field (one per modality's fields),
`cache.py` for pre-tokenisation (keyed by the raw bytes, one cache per modality).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .cache import TokenCache, codec_fingerprint
from .decode import DECODERS, BadSample, decode_sample, register_decoder, sample_modality
from .loader import GlobalBatchLoader
from .mixture import MixtureSource
from .order import EpochOrder, MixtureOrder
from .sources import JsonlSource, Source, TarShardSource, expand_paths

SourceSpec = str | os.PathLike | Sequence[str] | Mapping

__all__ = [
    "DECODERS",
    "BadSample",
    "EpochOrder",
    "GlobalBatchLoader",
    "JsonlSource",
    "MixtureOrder",
    "MixtureSource",
    "Source",
    "SourceSpec",
    "TarShardSource",
    "TokenCache",
    "codec_fingerprint",
    "decode_sample",
    "expand_paths",
    "open_source",
    "register_decoder",
    "sample_modality",
]


def open_source(spec: SourceSpec) -> Source:
    """A reader for a data spec, as written in a recipe YAML:

    * `"path/manifest.jsonl"` -> `JsonlSource`
    * `"shards/*.tar"`, `"shard-{000..009}.tar"`, `"a.tar"`, or a list of those -> `TarShardSource`
    * `{"path": <one of the above>, "name": ..., "qualify_keys": ...}` -> that reader with options
      (`qualify_keys` for tar shards only)
    * `{"mix": [{"source": <spec>, "weight": w, "name": ...}, ...], "block": ...}` -> `MixtureSource`
      (sources are specs themselves; "name" overrides the part's name, which prefixes its keys)
    """
    if isinstance(spec, Mapping):
        if "mix" in spec:
            unknown = set(spec) - {"mix", "name", "block"}
            if unknown:
                raise ValueError(f"unknown mixture keys {sorted(unknown)} (mix, name, block)")
            parts, weights = [], []
            for n, entry in enumerate(spec["mix"]):
                if not isinstance(entry, Mapping) or "source" not in entry:
                    raise ValueError(f"mix[{n}] must be {{'source': spec, 'weight': w}}, got {entry!r}")
                extra = set(entry) - {"source", "weight", "name"}
                if extra:
                    raise ValueError(f"unknown keys {sorted(extra)} in mix[{n}] (source, weight, name)")
                part = open_source(entry["source"])
                if entry.get("name"):
                    part.name = str(entry["name"])
                parts.append(part)
                weights.append(entry.get("weight", 1.0))
            return MixtureSource(parts, weights, name=spec.get("name", "mix"), block=spec.get("block"))
        if "path" in spec:
            options = {k: v for k, v in spec.items() if k != "path"}
            path = spec["path"]
            if _is_jsonl(path):
                return JsonlSource(path, **options)
            return TarShardSource(path, **options)
        raise ValueError(f"a dict data spec needs 'mix' or 'path', got keys {sorted(spec)}")
    if isinstance(spec, (str, os.PathLike)):
        if _is_jsonl(spec):
            return JsonlSource(spec)
        text = os.fspath(spec)
        if text.endswith(".tar") or any(c in text for c in "*?[{"):
            return TarShardSource(spec)
        raise ValueError(f"cannot tell the format of {text!r}: expected a .jsonl manifest, .tar shards, a glob or "
                         "a brace pattern")
    if isinstance(spec, Sequence) and spec and all(isinstance(s, (str, os.PathLike)) for s in spec):
        return TarShardSource(list(spec))
    raise TypeError(f"unsupported data spec {spec!r}")


def _is_jsonl(path) -> bool:
    return not isinstance(path, (list, tuple)) and os.fspath(path).endswith(".jsonl")
