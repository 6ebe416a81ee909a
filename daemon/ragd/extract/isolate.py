"""Extraction in worker processes (``python -m ragd.extract.worker``), so a file that hangs,
eats memory or crashes its parser costs one failed file, never the daemon.

Each worker serves one request at a time over its stdin/stdout (length-prefixed frames: a
pickle in, JSON out) under an address-space limit (``extract.memory_mb``); the caller waits at
most ``extract.timeout_s`` and kills the worker past it. Idle workers are kept for the next
file (a start imports Python, lxml and the extractors: tenths of a second); any thread may
call ``run`` (the writer and ``ReadFile``).
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from ragd.errors import CancelledError, ExtractError
from ragd.extract.base import Document, DocumentError, Extractor, Limits
from ragd.extract.worker import decode_reply

MAX_IDLE = 2
"""Workers kept waiting for the next file."""
MAX_BUSY = 4
"""Extractions at once (each worker may take extract.memory_mb): more callers wait their turn."""
MAX_FILES_PER_WORKER = 200
"""A worker is replaced after this many files, so leaks in parsers never add up."""
_HEADER = struct.Struct("<Q")


class _Timeout(Exception):
    pass


class _Crash(Exception):
    pass


class _Cancelled(Exception):
    pass


class _Gone(Exception):
    """The worker was dead before it took the request (an idle one killed meanwhile)."""


POLL_S = 0.2
"""How often a wait for a worker checks whether the caller gave up (a stopping daemon)."""


class _Worker:
    def __init__(self, memory_mb: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # what the caller can import, so can it
        self.memory_mb = memory_mb
        self.served = 0
        self.cancelled: Callable[[], bool] | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragd.extract.worker", str(memory_mb), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C for the daemon must not kill a file's extraction
        )

    def call(self, request: bytes, timeout: float, cancelled: Callable[[], bool] | None = None) -> bytes:
        deadline = time.monotonic() + timeout
        self.cancelled = cancelled
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(_HEADER.pack(len(request)) + request)
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _Gone() from exc
        size = _HEADER.unpack(self._read(stdout.fileno(), _HEADER.size, deadline))[0]
        return self._read(stdout.fileno(), size, deadline)

    def _read(self, fd: int, n: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        while n > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            ready, _, _ = select.select([fd], [], [], min(left, POLL_S) if self.cancelled else left)
            if not ready:
                if self.cancelled is not None and self.cancelled():
                    raise _Cancelled()
                continue
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise _Crash()
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> int | None:
        """Kill the worker; its exit status (negative: the signal that ended it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    def exit_status(self) -> int | None:
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None


class _Spawner:
    """Starts workers from one long-lived thread: a worker dies with the thread that started it
    (PR_SET_PDEATHSIG follows the thread), and callers' threads (gRPC's) come and go."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[int, Future[_Worker]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, memory_mb: int) -> _Worker:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="ragd-extract-spawner", daemon=True)
                self._thread.start()
        done: Future[_Worker] = Future()
        self._requests.put((memory_mb, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            memory_mb, done = self._requests.get()
            try:
                done.set_result(_Worker(memory_mb))
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


class WorkerPool:
    """Hands each extraction to an idle worker (or a new one) and enforces the limits."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_BUSY)

    def run(
        self, extractor: Extractor, path: Path, data: bytes, limits: Limits, cancelled: Callable[[], bool] | None = None
    ) -> Document:
        """The document, or ``DocumentError`` / ``ExtractError``; ``CancelledError`` (and the
        worker killed) as soon as ``cancelled()`` is true while it waits."""
        request = pickle.dumps(
            (type(extractor).__module__, extractor.name, str(path), data, limits), protocol=pickle.HIGHEST_PROTOCOL
        )
        while not self._slots.acquire(timeout=POLL_S):
            if cancelled is not None and cancelled():
                raise CancelledError(f"extraction of {path} cancelled")
        try:
            return self._run(request, path, limits, cancelled)
        finally:
            self._slots.release()

    def _run(self, request: bytes, path: Path, limits: Limits, cancelled: Callable[[], bool] | None) -> Document:
        worker = self._take(limits.memory_mb)
        try:
            try:
                reply = worker.call(request, limits.timeout_s, cancelled)
            except _Gone:  # not this file's doing: once more on a fresh worker
                worker.kill()
                worker = _SPAWNER.spawn(limits.memory_mb)
                reply = worker.call(request, limits.timeout_s, cancelled)
        except _Cancelled:
            worker.kill()
            raise CancelledError(f"extraction of {path} cancelled") from None
        except _Timeout:
            worker.kill()
            raise DocumentError(f"extraction timed out after {limits.timeout_s:g} s (extract.timeout_s)") from None
        except (_Crash, _Gone):
            exit_status = worker.exit_status()
            worker.kill()
            raise DocumentError(_crash_reason(exit_status, limits)) from None
        except BaseException:
            worker.kill()
            raise
        self._give(worker)
        try:
            status, value = decode_reply(reply)
        except (ValueError, KeyError, TypeError) as exc:
            raise DocumentError("extractor worker sent a malformed reply") from exc
        if isinstance(value, Document):
            return value
        if status == "skip":
            raise ExtractError(value)
        if status == "memory":
            raise DocumentError(f"out of memory: over extract.memory_mb = {limits.memory_mb} MiB")
        raise DocumentError(value)

    def _take(self, memory_mb: int) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive() and worker.memory_mb == memory_mb:
                    return worker
                worker.kill()
        return _SPAWNER.spawn(memory_mb)

    def _give(self, worker: _Worker) -> None:
        worker.served += 1
        with self._lock:
            if worker.served < MAX_FILES_PER_WORKER and len(self._idle) < MAX_IDLE and worker.alive():
                self._idle.append(worker)
                return
        worker.kill()

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their call returns)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


def _crash_reason(status: int | None, limits: Limits) -> str:
    if status is not None and status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        hint = f"; over extract.memory_mb = {limits.memory_mb} MiB?" if name in ("SIGABRT", "SIGSEGV", "SIGBUS") else ""
        return f"extractor crashed ({name}{hint})"
    return f"extractor crashed (exit status {status})"


POOL = WorkerPool()
atexit.register(POOL.close)
