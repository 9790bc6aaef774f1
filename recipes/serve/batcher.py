"""Dynamic batching: requests that arrive within a few milliseconds of each other run as one model call,
on one worker thread (model calls are CPU-bound and blocking; the event loop only waits on futures).

A `Job` is one request's rows (n images of one prompt, or one uploaded image to describe). Jobs whose
`key` is equal (same task, guidance, modality, ...) can share a call. The oldest waiting job starts a
batch, waits up to `max_wait_ms` after its arrival for others to join, and takes every compatible job
that fits in `max_batch` rows, oldest first. Rows keep their own seeds (one generator per row), so a
request gets the same result alone or batched. Past `max_queue` waiting rows, `submit` refuses (503).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# on_preview(scale, num_scales, previews: PIL images of this job's rows), called on the worker thread
PreviewFn = Callable[[int, int, list], None]


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class ImageKey:
    """Generation jobs share a call when these agree (generate takes them once per batch)."""

    modality: str
    segments: int
    cfg: float | None


@dataclass(frozen=True)
class DescribeKey:
    modality: str
    max_new_tokens: int
    asks: bool  # questions and captions are different calls of `describe`


@dataclass
class Job:
    key: Hashable
    # ImageKey: (prompt, seed) per row, giving PIL images (one segment) or clips [T, 3, H, W] in [0, 1];
    # DescribeKey: (item, question or None) per row, giving texts
    rows: list[Any]
    on_preview: PreviewFn | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    calls: int = 0
    rows: int = 0
    largest: int = 0
    busy_s: float = 0.0  # time in model calls


class Batcher:
    """Runs jobs on `model` in batches on one worker thread; `submit` is safe from any thread."""

    def __init__(self, model, max_batch: int = 32, max_wait_ms: float = 10.0, max_queue: int = 256):
        self.model, self.max_batch, self.max_wait, self.max_queue = model, max_batch, max_wait_ms / 1000, max_queue
        self.stats = BatchStats()
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="hart-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Rows waiting for the model (not the ones it is running)."""
        with self._cond:
            return sum(len(j.rows) for j in self._pending)

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; its future gets a list with one result per row. Raises QueueFull."""
        if len(job.rows) > self.max_batch:
            raise ValueError(f"a job of {len(job.rows)} rows cannot fit a batch of {self.max_batch}")
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if sum(len(j.rows) for j in self._pending) + len(job.rows) > self.max_queue:
                raise QueueFull(f"{self.max_queue} rows are already waiting")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Stop after the batch in progress; waiting jobs are cancelled."""
        with self._cond:
            self._closed = True
            dropped, self._pending = self._pending, []
            self._cond.notify()
        for job in dropped:
            job.future.cancel()
        self._thread.join(timeout=30)

    # -- the worker thread -----------------------------------------------------------------------

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._pending[0]
                # the window is measured from the oldest job's arrival: a busy server (whose jobs have
                # waited through the previous call) starts the next batch at once
                while self._rows(first.key) < self.max_batch and not self._closed:
                    left = first.arrived + self.max_wait - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return None
                batch, rows = [], 0
                for job in list(self._pending):
                    if job.key == first.key and rows + len(job.rows) <= self.max_batch:
                        self._pending.remove(job)
                        # a job whose request timed out (its future cancelled) is dropped here
                        if job.future.set_running_or_notify_cancel():
                            batch.append(job)
                            rows += len(job.rows)
                if batch:
                    return batch

    def _rows(self, key: Hashable) -> int:
        return sum(len(j.rows) for j in self._pending if j.key == key)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                results = self._run(batch)
            except Exception as e:
                if len(batch) == 1:  # a failure fails its request, not the server
                    batch[0].future.set_exception(e)
                    continue
                # one request that slipped past validation must not fail the others: each runs alone
                for job in batch:
                    try:
                        job.future.set_result(self._run([job])[0])
                    except Exception as e_job:
                        job.future.set_exception(e_job)
                continue
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)

    def _run(self, batch: list[Job]) -> list[list[Any]]:
        key, rows, start = batch[0].key, [r for job in batch for r in job.rows], time.perf_counter()
        starts = [0]
        for job in batch:
            starts.append(starts[-1] + len(job.rows))
        with torch.inference_mode():
            if isinstance(key, ImageKey):
                out = self._generate(key, batch, rows, starts)
            elif isinstance(key, DescribeKey):
                out = self.model.describe([item for item, _ in rows], modality=key.modality,
                                          question=[q for _, q in rows] if key.asks else None,
                                          max_new_tokens=key.max_new_tokens)
            else:
                raise TypeError(f"unknown job key {key!r}")
        self.stats.busy_s += time.perf_counter() - start
        self.stats.calls += 1
        self.stats.rows += len(rows)
        self.stats.largest = max(self.stats.largest, len(rows))
        return [list(out[a:b]) for a, b in zip(starts, starts[1:], strict=False)]

    def _generate(self, key: ImageKey, batch: list[Job], rows: Sequence[tuple[str, int]], starts: list[int]):
        from modalities import ImageCodec

        # pixels are quantised here, on the worker: torch called from the event loop's thread as well would
        # start a second pool of threads fighting this one for the cores
        callback = None
        if any(job.on_preview for job in batch):
            def callback(scale: int, num_scales: int, preview: torch.Tensor) -> None:
                preview = ImageCodec.to_pil(preview.cpu())
                for job, a, b in zip(batch, starts, starts[1:], strict=False):
                    if job.on_preview is not None:
                        try:
                            job.on_preview(scale, num_scales, preview[a:b])
                        except Exception:  # a client gone mid-stream must not fail the others' batch
                            job.on_preview = None
        out = self.model.generate([p for p, _ in rows], modality=key.modality, segments=key.segments,
                                  cfg=key.cfg, seed=[s for _, s in rows], callback=callback).cpu()
        if key.modality == "image" and key.segments == 1:
            return ImageCodec.to_pil(out)
        return out if key.segments > 1 else out[:, None]  # [B, segments, ...]: clips, audio chunks
