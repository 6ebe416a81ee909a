"""Extraction in worker processes: a hang is cut at the time limit, a crash or a memory hog
fails that file only, and the next file is read as usual."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import docfiles
import extract_fakes  # noqa: F401  (registers the misbehaving extractors)
import pytest

from ragd.errors import CancelledError
from ragd.extract import DocumentError, Limits, extract, forget_cached
from ragd.extract.isolate import POOL

PDF = docfiles.pdf([["A healthy PDF after the trouble."]])


@pytest.fixture(autouse=True)
def _no_cached_documents() -> None:
    """Every extraction here must reach a worker."""
    forget_cached()


def test_documents_are_kept_for_the_next_call() -> None:
    """ReadFile paging through a PDF extracts it once (a worker's death would not show)."""
    first = extract(Path("kept.pdf"), PDF)
    POOL.close()
    assert extract(Path("kept.pdf"), PDF) is first and not POOL._idle
    assert extract(Path("other-name.pdf"), PDF) is not first


def test_hang_is_cut_at_the_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(DocumentError, match=r"^extraction timed out after 1 s \(extract\.timeout_s\)$"):
        extract(Path("stuck.hang"), b"x", Limits(timeout_s=1.0))
    assert time.monotonic() - started < 5
    assert "healthy" in extract(Path("next.pdf"), PDF, Limits(timeout_s=1.0)).text


def test_a_stopping_caller_cancels_a_hang() -> None:
    stop_at = time.monotonic() + 0.5
    with pytest.raises(CancelledError, match="cancelled"):
        extract(Path("stuck.hang"), b"x", Limits(timeout_s=30.0), cancelled=lambda: time.monotonic() > stop_at)
    assert time.monotonic() - stop_at < 5  # not the 30 s limit (a worker's start may take a second)
    assert "healthy" in extract(Path("after.pdf"), PDF).text


def test_at_most_four_extractions_at_once() -> None:
    """Six hanging files on six threads: four run, two wait for a free worker (two rounds)."""
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(_failure(Path("h.hang"), Limits(timeout_s=1.5))))
               for _ in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 6 and all("timed out" in o for o in outcomes)
    assert time.monotonic() - started >= 2.9


def test_an_idle_worker_found_dead_is_replaced() -> None:
    """A worker that died while idle (killed, out of memory) is not the next file's failure."""
    extract(Path("warm.pdf"), PDF)
    dead = POOL._idle[-1]
    dead.proc.kill()
    dead.proc.wait()
    dead.alive = lambda: True  # as if it died just after the pool checked it
    assert "healthy" in extract(Path("fresh.pdf"), PDF).text


def test_crash_fails_the_file_only() -> None:
    with pytest.raises(DocumentError, match=r"^extractor crashed \(SIGSEGV"):
        extract(Path("bad.crash"), b"x")
    assert "healthy" in extract(Path("next.pdf"), PDF).text


def test_memory_limit() -> None:
    with pytest.raises(DocumentError, match=r"^out of memory: over extract\.memory_mb = 512 MiB$"):
        extract(Path("big.hog"), b"x", Limits(memory_mb=512))
    assert "healthy" in extract(Path("next.pdf"), PDF, Limits(memory_mb=512)).text


def test_workers_are_reused_and_serve_threads_at_once() -> None:
    extract(Path("warm.pdf"), PDF)
    results: list[str] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            data = docfiles.pdf([[f"Thread number {i} was here."]])
            results.append(extract(Path(f"t{i}.pdf"), data).text)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(r.split()[2] for r in results) == ["0", "1", "2", "3"]
    assert 1 <= len(POOL._idle) <= 2


def test_workers_outlive_the_thread_that_started_them() -> None:
    """gRPC threads come and go: a worker one of them needed stays for the next file."""
    POOL.close()
    thread = threading.Thread(target=lambda: extract(Path("a.pdf"), PDF))
    thread.start()
    thread.join(30)
    time.sleep(0.5)
    assert POOL._idle and all(w.alive() for w in POOL._idle)


def test_a_hang_does_not_block_other_threads() -> None:
    """A slow extraction on one thread (the writer) leaves another (ReadFile) free to extract."""
    outcome: list[str] = []
    slow = threading.Thread(target=lambda: outcome.append(_failure(Path("slow.hang"), Limits(timeout_s=8.0))))
    slow.start()
    time.sleep(0.3)
    assert "healthy" in extract(Path("quick.pdf"), PDF).text
    assert slow.is_alive() and not outcome  # answered while the hang was still running
    slow.join(20)
    assert outcome and "timed out" in outcome[0]


def _failure(path: Path, limits: Limits) -> str:
    try:
        extract(path, b"x", limits)
    except DocumentError as exc:
        return str(exc)
    return "no failure"
