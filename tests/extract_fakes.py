"""Extractors that misbehave on purpose, for the isolation tests. Importing this module registers
them (the worker process imports it by name to find them); each claims only its own suffix."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ragd.extract import Document, Limits, register
from ragd.extract.base import Format


class Hang(Format):
    """Never returns (a parser stuck in a loop)."""

    name = "fake-hang"
    suffixes = frozenset({".hang"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        while True:
            time.sleep(1)


class Crash(Format):
    """Dies as a native parser does on a bad pointer."""

    name = "fake-crash"
    suffixes = frozenset({".crash"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        os.kill(os.getpid(), signal.SIGSEGV)
        raise AssertionError("unreachable")


class Hog(Format):
    """Asks for 8 GiB, far over any test's memory limit."""

    name = "fake-hog"
    suffixes = frozenset({".hog"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        hoard = bytearray(8 << 30)
        return Document(str(len(hoard)), "text", "")


class Rewrite(Format):
    """Rewrites its own file the first time it reads it, as an editor saving meanwhile would."""

    name = "fake-rewrite"
    suffixes = frozenset({".rewrite"})

    def extract(self, path: Path, data: bytes, limits: Limits) -> Document:
        text = data.decode()
        if "second version" not in text:
            time.sleep(0.05)
            path.write_text("the second version of the rewritten file\n")
        return Document(text, "text", "")


for fake in (Hang(), Crash(), Hog(), Rewrite()):
    register(fake)
