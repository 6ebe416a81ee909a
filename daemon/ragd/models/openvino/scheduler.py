"""The inference slots every converted model in the process shares (one per stream of a
compiled model, ``STREAMS``), with searches first; how and why, with measurements:
docs/architecture.md, "Models", and docs/performance.md, "How the CPU is shared"."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np

from ragd.models.base import Holds

STREAMS = 1
"""Streams per compiled model: one stream using every core keeps a single query or rerank
pass short, which the search deadline needs (docs/performance.md, "How the CPU is shared")."""


class _Batch:
    """A background batch on its slot. ``cancel`` stops its run from another thread (a no-op
    on a request not running yet: the batch then runs to the end)."""

    def __init__(self, request: Any, cancels: int) -> None:
        self.request = request
        self.cancels = cancels  # times the batch was cancelled before this run
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.request.cancel()


class Scheduler:
    """Inference slots with searches first.

    Background work (the writer's embedding batches) takes a slot only while no foreground
    work (a search's query embedding or rerank pairs) waits, and while searches are coming
    (one ended less than ``RESERVE_S`` seconds ago) it leaves one slot free, for at most
    ``RESERVE_S`` per batch: with a single stream it pauses. So the searches right after a
    search find the slot free, and indexing still takes a batch every ``RESERVE_S`` under a
    constant stream of searches. A search with a deadline ``hold``s the slots for its
    reranking, so no indexing batch slips in between its rerank batches and makes it late:
    background work waits until the hold ends (at most the search's deadline).

    A search that finds the single slot taken by an indexing batch cancels that batch
    (``preemptions``), which runs again later, so the search waits for milliseconds instead
    of the whole batch. Before the slot is handed over, the cancelled request is dropped and
    the model runs one token on a new one (``_reset``), since OpenVINO's CPU graph could fail
    later runs after a cancelled one. A batch is cancelled at most ``CANCELS_PER_BATCH``
    times, then runs to the end, so a steady stream of searches slows indexing but never
    stops it. With several slots the reset could not pick the cancelled run's stream, so
    there a search waits for a free slot."""

    RESERVE_S = 0.5
    """Covers the gap between one search and the next of a burst (a client's round trip),
    short enough that a note written while an agent polls search is indexed without delay."""
    CANCELS_PER_BATCH = 3
    """An indexing batch cancelled this many times runs to the end (0: searches never cancel)."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._cond = threading.Condition()
        self._running = 0
        self._waiting = 0  # foreground jobs waiting for a slot
        self._holds = Holds(self._cond)  # searches holding every slot for foreground work (``hold``)
        self._last_foreground = -float("inf")
        self._batches: list[_Batch] = []  # background batches on a slot
        self.foreground_waits = 0  # foreground jobs that found no free slot
        self.preemptions = 0  # background runs cancelled for a search (and run again)

    def _background_wait(self, since: float) -> float | None:
        """Seconds background work waiting since ``since`` must wait before it may look again;
        None: it may start. The reserve holds a background job back for at most ``RESERVE_S``,
        so searches coming one after another slow indexing down but never stop it."""
        if self._waiting or self._holds.count:
            return 1.0
        reserve_left = min(self._last_foreground, since) + self.RESERVE_S - time.monotonic()
        room = self.slots - (1 if reserve_left > 0 else 0)
        if self._running < room:
            return None
        return max(0.01, reserve_left) if self._running < self.slots else 1.0

    def _preempt(self) -> None:
        """Cancel the background batch on the single slot, unless it was cancelled often enough."""
        if self.slots != 1:
            return
        for batch in self._batches:
            if not batch.cancelled and batch.cancels < self.CANCELS_PER_BATCH:
                batch.cancel()

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """While inside, background work does not start (work already running finishes);
        afterwards it holds back as after any search."""
        def ended() -> None:
            self._last_foreground = time.monotonic()

        return self._holds(ended)

    def run(self, request: Any, inputs: dict[str, np.ndarray], foreground: bool) -> Any:
        """Run ``inputs`` when a slot is free for them; returns the request that holds the
        outputs (``request``, or a new one of the same model after a cancelled run)."""
        if foreground:
            with self._cond:
                self._waiting += 1
                if self._running >= self.slots:
                    self.foreground_waits += 1
                    self._preempt()
                try:
                    while self._running >= self.slots:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._running += 1
            try:
                request.infer(inputs)
            finally:
                self._release(foreground=True)
            return request
        since = time.monotonic()
        cancels = 0
        while True:
            with self._cond:
                while (pause := self._background_wait(since)) is not None:
                    self._cond.wait(timeout=pause)
                self._running += 1
                batch = _Batch(request, cancels)
                self._batches.append(batch)
            try:
                # A synchronous run as before; a search cancels it from its own thread.
                try:
                    request.infer(inputs)
                    return request
                except RuntimeError:
                    if not batch.cancelled:
                        raise
                cancels += 1
                with self._cond:
                    self.preemptions += 1
                request = _reset(request, inputs)  # while still on the slot
            finally:
                with self._cond:
                    self._batches.remove(batch)
                self._release(foreground=False)

    def _release(self, foreground: bool) -> None:
        with self._cond:
            self._running -= 1
            if foreground:
                self._last_foreground = time.monotonic()
            self._cond.notify_all()


def _reset(cancelled: Any, inputs: dict[str, np.ndarray]) -> Any:
    """A new request of ``cancelled``'s model, after one completed run of a 1 x 1 input (cut
    from ``inputs``), which leaves the model's CPU graph consistent after a cancelled run."""
    one = {name: np.ascontiguousarray(value[:1, :1]) for name, value in inputs.items()}
    compiled = cancelled.get_compiled_model()
    request = compiled.create_infer_request()
    try:
        request.infer(one)
    except RuntimeError:  # none seen; once more on another request
        request = compiled.create_infer_request()
        request.infer(one)
    return request


_scheduler: Scheduler | None = None
_scheduler_lock = threading.Lock()


def scheduler() -> Scheduler:
    """The process's scheduler (a slot per stream)."""
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None:
            _scheduler = Scheduler(STREAMS)
        return _scheduler
