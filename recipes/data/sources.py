"""Map-style, indexed readers of the on-disk data formats.

Every reader exposes the same small interface (`Source`): `len(source)`, `source.key(i)`,
`source.raw(i)` (the undecoded fields of sample i) and `source.name`.

Why an index instead of streaming (the usual `webdataset.WebDataset` pipeline)? A stream's
order depends on how shards are split between ranks and dataloader workers and on where a
shuffle buffer happened to be when the job stopped; it can neither give the same global batches
for 8 and for 64 GPUs nor restart exactly at step s without replaying the stream. With a
random-access index the global order is a pure function of (seed, epoch) over sample
numbers, every rank computes the same batch for step s by arithmetic, and resuming needs
nothing but the step number. The index is built once at construction by scanning tar headers
(512 bytes a member, no payload is read); a sample is then read by seeking to its members.

`raw(i)` returns a dict of undecoded fields:

    {"__key__": str, "__url__": str (shard or manifest), "__source__": source name,
     "<ext>": bytes, ...                  # tar: one entry per member, e.g. "png", "txt", "json"
     "__error__": str}                    # only when the reader already knows the sample is bad

The JSONL reader stores the manifest line under "json" and the image bytes under "image".
Bad samples are never dropped here: they are indexed, and decoding reports them
(`recipes.data.decode.BadSample`), so every rank agrees on what a sample number means.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from braceexpand import braceexpand

log = logging.getLogger("recipes.data")

PathSpec = str | os.PathLike | Sequence[str | os.PathLike]


@runtime_checkable
class Source(Protocol):
    """What the loader needs from a reader."""

    name: str

    def __len__(self) -> int: ...

    def key(self, i: int) -> str: ...

    def raw(self, i: int) -> dict: ...


def _check_index(i: int, n: int) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"sample {i} out of range for a source of {n} samples")
    return i


def expand_paths(paths: PathSpec) -> list[str]:
    """Brace lists (`shard-{000..009}.tar`) and glob patterns (`shards/*.tar`) -> file paths.

    Order: as given, brace expansions in their order, glob matches sorted; duplicates (the same
    shard named twice, e.g. by overlapping patterns) are kept once, at their first place.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for spec in paths:
        for p in braceexpand(os.fspath(spec)):
            p = os.path.expanduser(p)
            if glob.has_magic(p):
                matches = sorted(glob.glob(p))
                if not matches:
                    raise FileNotFoundError(f"no file matches {p!r}")
                out.extend(matches)
            elif os.path.isfile(p):
                out.append(p)
            else:
                raise FileNotFoundError(f"no such shard: {p!r}")
    seen: set[str] = set()
    unique = []
    for p in out:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    if not unique:
        raise FileNotFoundError(f"no shards in {paths!r}")
    return unique


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = path up to the first dot of the file name, ext = the rest
    (lower-cased). `None` for names without an extension and `__meta__` entries."""
    if _META.match(name):
        return None
    m = _MEMBER.match(name)
    return None if m is None else (m.group(1), m.group(2).lower())


class TarShardSource:
    """webdataset tar shards (`KEY.jpg|png|webp` + `KEY.txt` and/or `KEY.json`), indexed.

    `paths`: a path, a glob, a brace list, or a list of those; shards keep the given order and
    samples are sorted by key within a shard. A damaged shard never stops indexing: complete
    members are kept, the sample whose member is cut is indexed as bad (`raw(i)["__error__"]`),
    and what follows the cut is reported in `index_errors` (and logged). Keys must be unique
    across shards (they name cache files and bad-sample reports); `qualify_keys=True` prefixes
    every key with its shard's file name for datasets that restart numbering in each shard.
    """

    def __init__(self, paths: PathSpec, name: str | None = None, qualify_keys: bool = False):
        self.shards = expand_paths(paths)
        self.name = name or _default_name(paths, self.shards)
        self.qualify_keys = qualify_keys
        self.index_errors: list[str] = []
        self._exts: list[str] = []  # member extension table
        ext_id: dict[str, int] = {}
        keys: list[str] = []
        sample_shard: list[int] = []
        sample_start: list[int] = []
        m_ext: list[int] = []
        m_off: list[int] = []
        m_size: list[int] = []
        self._errors: dict[int, str] = {}
        for s, path in enumerate(self.shards):
            groups, cut_key, error = _scan_shard(path)
            if error:
                msg = f"{path}: {error}"
                self.index_errors.append(msg)
                log.warning("damaged shard %s", msg)
            for key in sorted(groups):
                idx = len(keys)
                keys.append(f"{Path(path).name}/{key}" if qualify_keys else key)
                sample_shard.append(s)
                sample_start.append(len(m_off))
                members = groups[key]
                exts = [e for e, _, _ in members]
                if key == cut_key:
                    self._errors[idx] = f"truncated shard: {error}"
                elif len(set(exts)) != len(exts):
                    self._errors[idx] = f"duplicate members {sorted(exts)} in {path}"
                for ext, off, size in members:
                    if ext not in ext_id:
                        ext_id[ext] = len(self._exts)
                        self._exts.append(ext)
                    m_ext.append(ext_id[ext])
                    m_off.append(off)
                    m_size.append(size)
        if not keys:
            raise ValueError(f"no samples in {len(self.shards)} shard(s) {self.shards[:3]}...: "
                             + ("; ".join(self.index_errors) or "the shards hold no KEY.ext members"))
        self._keys = keys
        self._shard = np.asarray(sample_shard, dtype=np.int32)
        self._start = np.asarray([*sample_start, len(m_off)], dtype=np.int64)
        self._m_ext = np.asarray(m_ext, dtype=np.int32)
        self._m_off = np.asarray(m_off, dtype=np.int64)
        self._m_size = np.asarray(m_size, dtype=np.int64)
        if len(set(keys)) != len(keys):
            dup = _first_duplicate(keys)
            raise ValueError(f"key {dup!r} appears in more than one shard of {self.name}; keys must be unique "
                             "(they name cache files and bad-sample reports): pass qualify_keys=True to prefix "
                             "keys with the shard file name")

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[_check_index(i, len(self))]

    def raw(self, i: int) -> dict:
        i = _check_index(i, len(self))
        path = self.shards[int(self._shard[i])]
        out: dict = {"__key__": self._keys[i], "__url__": path, "__source__": self.name}
        with open(path, "rb") as f:
            for m in range(int(self._start[i]), int(self._start[i + 1])):
                f.seek(int(self._m_off[m]))
                size = int(self._m_size[m])
                data = f.read(size)
                if len(data) != size:
                    raise OSError(f"{path}: short read at byte {int(self._m_off[m])} "
                                  f"({len(data)} of {size} bytes); was the shard modified after indexing?")
                out[self._exts[int(self._m_ext[m])]] = data
        if i in self._errors:
            out["__error__"] = self._errors[i]
        return out

    def describe(self) -> dict:
        return {"type": "tar", "name": self.name, "samples": len(self), "shards": len(self.shards),
                "index_errors": len(self.index_errors), "flagged_at_index": len(self._errors)}

    def __repr__(self) -> str:
        return f"TarShardSource({self.name!r}, {len(self)} samples in {len(self.shards)} shards)"


def _scan_shard(path: str) -> tuple[dict[str, list[tuple[str, int, int]]], str | None, str | None]:
    """Members of one shard grouped by key: {key: [(ext, data offset, size)]}, the key of a member
    cut by truncation (or None), and what went wrong (or None)."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    file_size = os.path.getsize(path)
    cut_key = error = None
    count = 0
    try:
        with tarfile.open(path, mode="r:") as tf:
            while True:
                try:
                    ti = tf.next()
                except (tarfile.TarError, EOFError, OSError) as e:
                    error = f"unreadable tar header after {count} members ({e}); the rest is skipped"
                    break
                if ti is None:
                    # tarfile ends quietly at a cut or garbled header: tell those from the real end
                    error = _end_of_archive_problem(tf.fileobj, tf.offset, file_size)
                    break
                count += 1
                tf.members = []  # do not keep every TarInfo of a large shard
                if not ti.isreg():
                    continue
                split = split_member_name(ti.name)
                end = ti.offset_data + ti.size
                if end > file_size:
                    error = (f"member {ti.name!r} is cut ({file_size - ti.offset_data} of {ti.size} bytes); "
                             "the rest is skipped")
                    if split is not None:
                        cut_key = split[0]
                        groups.setdefault(cut_key, []).append((split[1], ti.offset_data, file_size - ti.offset_data))
                    break
                if split is not None:
                    groups.setdefault(split[0], []).append((split[1], ti.offset_data, ti.size))
    except (tarfile.TarError, EOFError, OSError) as e:
        error = f"not a readable tar file ({e})"
    return groups, cut_key, error


def _end_of_archive_problem(fileobj, offset: int, file_size: int) -> str | None:
    """None if `offset` holds the zero block that ends a tar archive, else what is wrong there."""
    fileobj.seek(offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        return f"the archive is cut at byte {file_size} (no end-of-archive block); members after it are lost"
    if block.count(0) != len(block):
        return f"invalid tar header at byte {offset}; the rest is skipped"
    return None


def _first_duplicate(items: list[str]) -> str:
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    raise AssertionError("no duplicate")


def _default_name(spec: PathSpec, shards: list[str]) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return Path(os.fspath(spec)).name
    return Path(shards[0]).name + (f"+{len(shards) - 1}" if len(shards) > 1 else "")


class JsonlSource:
    """A JSON-lines manifest: `{"image": path, "caption": ..., "question": ..., "answer": ...}` a line.

    Image paths are relative to the manifest's folder (or absolute). Keys are `"<manifest
    name>:<line number>"` (1-based, as editors count). Blank lines are skipped; a malformed line is
    still a sample (it fails at decode), so that sample numbers never depend on line contents.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = Path(path)
        self.root = self.path.parent
        self.name = name or self.path.name
        offsets, lengths, lines = [], [], []
        offset = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    offsets.append(offset)
                    lengths.append(len(line))
                    lines.append(lineno)
                offset += len(line)
        if not offsets:
            raise ValueError(f"{self.path}: empty manifest")
        self._off = np.asarray(offsets, dtype=np.int64)
        self._len = np.asarray(lengths, dtype=np.int64)
        self._line = np.asarray(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._off)

    def key(self, i: int) -> str:
        return f"{self.path.name}:{int(self._line[_check_index(i, len(self))])}"

    def raw(self, i: int) -> dict:
        i = _check_index(i, len(self))
        with open(self.path, "rb") as f:
            f.seek(int(self._off[i]))
            line = f.read(int(self._len[i])).strip()
        out: dict = {"__key__": self.key(i), "__url__": str(self.path), "__source__": self.name, "json": line}
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return out  # decode reports it
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and image:
            image_path = self.root / image
            try:
                out["image"] = image_path.read_bytes()
            except OSError as e:
                out["__error__"] = f"cannot read image file {str(image_path)!r} ({e.strerror or e})"
        return out

    def describe(self) -> dict:
        return {"type": "jsonl", "name": self.name, "samples": len(self), "manifest": str(self.path)}

    def __repr__(self) -> str:
        return f"JsonlSource({str(self.path)!r}, {len(self)} samples)"
