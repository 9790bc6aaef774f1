"""Writing webdataset tar shards of a synthetic world: fixed member mtimes, so the same samples give
byte-identical shards, and a brace pattern the loaders read back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_shards(folder: str | os.PathLike, prefix: str, items: Sequence[T], per_shard: int,
                 record: Callable[[T], dict]) -> str:
    """`record(item)` -> {"__key__": ..., "EXT": bytes | str, ...} for each item, `per_shard` to a tar named
    `folder/PREFIX-NNN.tar`; returns the pattern, e.g. "folder/PREFIX-{000..004}.tar"."""
    import webdataset as wds

    if per_shard < 1 or not items:
        raise ValueError(f"need at least one item and per_shard >= 1, got {len(items)} items, per_shard={per_shard}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(items) // per_shard)
    width = max(3, len(str(n_shards - 1)))
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:0{width}d}.tar"), mtime=0.0) as sink:
            for item in items[s * per_shard : (s + 1) * per_shard]:
                sink.write(record(item))
    return str(folder / f"{prefix}-{{{'0' * width}..{n_shards - 1:0{width}d}}}.tar")
