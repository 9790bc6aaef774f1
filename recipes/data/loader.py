"""`GlobalBatchLoader`: the same micro-batches whatever the number of ranks, resumable by step.

    loader = GlobalBatchLoader(source, global_batch=256, micro_batch=8, seed=0, image_size=256)
    for step in range(start_step, total_steps):
        for j, samples in loader.micro_batches(step, rank, world_size):   # j = rank, rank + W, ...
            ...  # samples: decoded dicts (recipes.data.decode), maybe fewer than micro_batch, maybe []

Step s's global batch is positions [s * global_batch, (s + 1) * global_batch) of the sample order
(`recipes.data.order`); it is cut into M = global_batch // micro_batch contiguous micro-batches
j = 0..M-1 and rank r owns those with j % world_size == r. So 1 rank doing M micro-batches of
gradient accumulation and W ranks doing M/W each see exactly the same samples in the same
micro-batches, and the step number is the whole resume state.

Bad samples (`BadSample` while reading or decoding) are dropped from their micro-batch; every
rank and every run drops the same ones. `bad_count` counts drops (a bad sample drawn again in a
later epoch counts again); `bad_keys` / `bad_reasons` hold the distinct keys; each key is logged
once (per process) on the "recipes.data" logger. Counts are per rank: sum them over ranks for
the run's totals (the sum equals what a single rank would count).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from .cache import TokenCache
from .decode import RESIZE_MODES, BadSample, as_size, decode_sample, sample_modality
from .mixture import MixtureSource
from .order import EpochOrder
from .sources import Source

log = logging.getLogger("recipes.data")


class GlobalBatchLoader:
    """Deterministic, rank-independent micro-batches of decoded samples.

    drop_last=True: each epoch's permutation is cut to a multiple of `global_batch` (at most
    `global_batch - 1` samples, different ones each epoch, are left out of an epoch), so a
    global batch never straddles two epochs and never holds a sample twice.
    drop_last=False: the next epoch's permutation continues the stream, nothing is left out,
    and a global batch may span an epoch boundary. A `MixtureSource` has no epochs of its own
    (each part runs through its own), so drop_last does not apply to it.

    modalities: the items to decode (default: every modality with a registered decoder, see
    `recipes.data.decode`); a sample holding none of them is bad.
    cache: a `TokenCache`, or one per modality ({modality: cache}); then every sample whose item has a
    cache also carries "tokens" (HybridTokens, the item's segments as rows) and "modality".
    workers: threads decoding a micro-batch in parallel (0: in the calling thread); the result
    does not depend on it.
    """

    def __init__(self, source: Source, global_batch: int, micro_batch: int, seed: int,
                 image_size: int | tuple[int, int], drop_last: bool = True,
                 cache: TokenCache | Mapping[str, TokenCache] | None = None, resize: str = "center_crop",
                 workers: int = 0, modalities: Iterable[str] | None = None, **decode_options):
        if global_batch <= 0 or micro_batch <= 0:
            raise ValueError(f"global_batch and micro_batch must be positive, got {global_batch}, {micro_batch}")
        if global_batch % micro_batch:
            raise ValueError(f"global_batch {global_batch} is not a multiple of micro_batch {micro_batch}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.source = source
        self.global_batch, self.micro_batch = int(global_batch), int(micro_batch)
        self.seed = int(seed)
        self.image_size = as_size(image_size)
        self.drop_last = drop_last
        if isinstance(cache, TokenCache):
            cache = {cache.modality: cache}
        self.caches: dict[str, TokenCache] = dict(cache or {})
        self.modalities = None if modalities is None else tuple(modalities)
        self.resize = resize
        self.decode_options = decode_options  # video_frames, sample_rate, audio_seconds (see decode_sample)
        self.workers = int(workers)
        n = len(source)
        if isinstance(source, MixtureSource):
            self.epoch_len = n
            self.order = source.order(self.seed)
        else:
            if drop_last and n < global_batch:
                raise ValueError(f"{source.name} has {n} samples, fewer than global_batch {global_batch}: no "
                                 "full batch per epoch (drop_last=False lets batches wrap into the next epoch)")
            self.epoch_len = (n // global_batch) * global_batch if drop_last else n
            self.order = EpochOrder(n, self.seed, self.epoch_len)
        for c in self.caches.values():
            codec_size = getattr(c.codec, "image_size", None)
            if codec_size is not None and tuple(codec_size) != self.image_size:
                raise ValueError(f"image_size {self.image_size} differs from the cache codec's {tuple(codec_size)}")
        self.bad_count = 0
        self.bad_keys: set[str] = set()
        self.bad_reasons: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ the order
    @property
    def num_micro_batches(self) -> int:
        """M, micro-batches per global batch."""
        return self.global_batch // self.micro_batch

    def global_indices(self, step: int) -> list[int]:
        """Source sample numbers of step `step`'s global batch (bad ones included)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.order.indices(step * self.global_batch, self.global_batch)

    def micro_batch_indices(self, step: int, j: int) -> list[int]:
        if not 0 <= j < self.num_micro_batches:
            raise ValueError(f"micro-batch {j} out of range [0, {self.num_micro_batches})")
        return self.global_indices(step)[j * self.micro_batch : (j + 1) * self.micro_batch]

    def owned(self, rank: int, world_size: int) -> list[int]:
        """The micro-batch numbers j that `rank` of `world_size` processes each step."""
        M = self.num_micro_batches
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if M % world_size:
            raise ValueError(f"global_batch {self.global_batch} / micro_batch {self.micro_batch} = {M} micro-batches "
                             f"do not split evenly over {world_size} ranks; choose global_batch as a multiple of "
                             f"micro_batch * world_size = {self.micro_batch * world_size}")
        return list(range(rank, M, world_size))

    def epoch(self, step: int) -> float:
        """Passes over the data before step `step` (for a mixture: over the concatenated parts)."""
        return step * self.global_batch / self.epoch_len

    # ------------------------------------------------------------------ the samples
    def micro_batches(self, step: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, list[dict]]]:
        """[(j, samples)] for the micro-batches of step `step` that `rank` owns, in increasing j."""
        owned = self.owned(rank, world_size)
        indices = self.global_indices(step)
        mb = self.micro_batch
        return [(j, self.load(indices[j * mb : (j + 1) * mb])) for j in owned]

    def load(self, indices: list[int]) -> list[dict]:
        """Decode source samples `indices` (in order), dropping, counting and logging the bad ones.
        Each sample also gets "index" (its source sample number) and, with a cache for its item,
        "modality" and "tokens"."""
        if self.workers > 0 and len(indices) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="recipes-data")
            results = list(self._pool.map(self._fetch, indices))
        else:
            results = [self._fetch(i) for i in indices]
        samples = []
        for i, r in zip(indices, results, strict=True):
            if isinstance(r, BadSample):
                self._record_bad(r)
            else:
                r["index"] = i
                samples.append(r)
        order = self.modalities or tuple(self.caches)
        for modality, cache in self.caches.items():  # each modality's items in one batch
            mine = [s for s in samples if sample_modality(s, order) == modality]
            if mine:
                tokens = cache.get_many([s[modality] for s in mine], [s["digests"][modality] for s in mine])
                for s, t in zip(mine, tokens, strict=True):
                    s["modality"], s["tokens"] = modality, t
        return samples

    def _fetch(self, i: int) -> dict | BadSample:
        try:
            raw = self.source.raw(i)
        except OSError as e:
            return BadSample(self.source.key(i), f"read error: {e}")
        try:
            return decode_sample(raw, self.image_size, self.resize, self.modalities, **self.decode_options)
        except BadSample as e:
            return e

    def _record_bad(self, e: BadSample) -> None:
        self.bad_count += 1
        if e.key not in self.bad_keys:
            self.bad_keys.add(e.key)
            self.bad_reasons[e.key] = e.reason
            log.warning("skipping bad sample %s: %s", e.key, e.reason)

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict:
        n = len(self.source)
        d = {
            "source": self.source.describe() if hasattr(self.source, "describe") else repr(self.source),
            "samples": n,
            "global_batch": self.global_batch,
            "micro_batch": self.micro_batch,
            "micro_batches_per_step": self.num_micro_batches,
            "seed": self.seed,
            "image_size": list(self.image_size),
            "drop_last": self.drop_last,
            "samples_per_epoch": self.epoch_len,
            "left_out_per_epoch": n - self.epoch_len,
            "steps_per_epoch": self.epoch_len / self.global_batch,
            "epochs_per_step": self.global_batch / self.epoch_len,
            "bad_count": self.bad_count,
            "bad_keys": len(self.bad_keys),
            "cache": {m: str(c.folder) for m, c in self.caches.items()} or None,
        }
        if isinstance(self.source, MixtureSource):
            d["drop_last"] = None
            d["mixture"] = [{"name": s.name, "weight": w, "samples": len(s),
                             "epochs_per_step": w * self.global_batch / len(s)}
                            for s, w in zip(self.source.sources, self.source.weights, strict=True)]
        return d

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
