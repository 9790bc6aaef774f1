"""Sample orders: global position p (0, 1, 2, ... over the whole run) -> sample number.

Orders are pure functions of (seed, p): no state but the position, so any rank computes any
step's batch and resuming at step s needs nothing but s.

* `EpochOrder`: epoch e is `torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`
  (cut to `epoch_len` samples), epochs are concatenated.
* `MixtureOrder` (built by `MixtureSource.order`): positions are dealt to sources in blocks of
  B positions with fixed per-source counts (the weights, apportioned by largest remainder) and a
  seeded shuffle inside each block; the c-th position dealt to source k (counting in position
  order) takes sample c of the concatenated epoch permutations of source k. Each source thus
  runs through its own epochs at its own pace, without replacement within an epoch (a
  0.1-weight source of 1M samples and a 0.9-weight one of 10k samples are both fine).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def randperm(n: int, seed: int) -> np.ndarray:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


class _LRU(OrderedDict):
    """The last `size` values of an expensive function of one key (epoch permutations, blocks)."""

    def __init__(self, build, size: int = 2):
        super().__init__()
        self.build, self.size = build, size

    def __call__(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = self.build(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class EpochOrder:
    """Concatenated seeded epoch permutations of `range(n)`, each cut to its first `epoch_len`."""

    def __init__(self, n: int, seed: int, epoch_len: int | None = None):
        self.n, self.seed = n, seed
        self.epoch_len = n if epoch_len is None else epoch_len
        if not 0 < self.epoch_len <= n:
            raise ValueError(f"epoch_len must be in [1, {n}], got {self.epoch_len}")
        self._perm = _LRU(lambda e: randperm(n, seed + e))

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            e, off = divmod(p, self.epoch_len)
            out.append(int(self._perm(e)[off]))
        return out


class MixtureOrder:
    """Positions -> (source k, sample j of source k), returned as `bases[k] + j`; see the module doc."""

    def __init__(self, lengths: Sequence[int], weights: Sequence[float], seed: int, block: int | None = None):
        self.lengths = [int(n) for n in lengths]
        self.weights = normalise_weights(weights)
        if len(self.lengths) != len(self.weights):
            raise ValueError(f"{len(self.lengths)} sources for {len(self.weights)} weights")
        if min(self.lengths) <= 0:
            raise ValueError("every mixture source needs samples")
        self.seed = seed
        self.block = int(block) if block else default_block(self.weights)
        self.counts = apportion(self.weights, self.block)
        if any(c == 0 for c in self.counts):
            raise ValueError(f"block of {self.block} positions gives a source no position (counts {self.counts}); "
                             "use a larger block")
        self.bases = [sum(self.lengths[:k]) for k in range(len(self.lengths))]
        self._slot_source = np.repeat(np.arange(len(self.counts)), self.counts)
        self._blocks = _LRU(self._deal)
        self._source_perm = [_LRU(lambda e, k=k: randperm(self.lengths[k], derive_seed(seed, "mix-source", k, e)))
                             for k in range(len(self.lengths))]

    def _deal(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b: the source of each position, and how many earlier positions of the block went
        to the same source (so that each source is consumed in position order)."""
        source = self._slot_source[randperm(self.block, derive_seed(self.seed, "mix-block", b))]
        rank = np.empty(self.block, dtype=np.int64)
        for k in range(len(self.counts)):
            where = np.flatnonzero(source == k)
            rank[where] = np.arange(len(where))
        return source, rank

    def locate(self, p: int) -> tuple[int, int]:
        """Position p -> (source k, sample j of that source)."""
        b, t = divmod(p, self.block)
        source, rank = self._blocks(b)
        k = int(source[t])
        c = b * self.counts[k] + int(rank[t])  # the c-th position dealt to source k
        e, off = divmod(c, self.lengths[k])
        return k, int(self._source_perm[k](e)[off])

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            k, j = self.locate(p)
            out.append(self.bases[k] + j)
        return out


def normalise_weights(weights: Sequence[float]) -> list[float]:
    w = [float(x) for x in weights]
    if not w or any(not math.isfinite(x) or x <= 0 for x in w):
        raise ValueError(f"mixture weights must be positive and finite, got {list(weights)}")
    total = sum(w)
    return [x / total for x in w]


def default_block(weights: Sequence[float]) -> int:
    """Big enough that the smallest weight gets >= 200 positions a block (rounding error <= 0.25%)."""
    return int(min(max(1024, math.ceil(200 / min(weights))), 2**22))


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Largest-remainder split of `total` by `weights` (ties to the earlier source)."""
    exact = [w * total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts
