"""The extraction worker process (started by ``ragd.extract.isolate``): reads requests from
stdin, extracts in-process under an address-space limit, writes replies to stdout.

Arguments: the memory limit in MiB (0 = none) and the parent's pid (the worker exits when
the parent is gone, also while stuck in a parser, through PR_SET_PDEATHSIG on Linux: it follows
the thread that started the worker, hence the pool starts them from one long-lived thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import pickle
import resource
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

from ragd.extract.base import Document, Heading

_HEADER = struct.Struct("<Q")


def encode_reply(status: str, value: Document | str) -> bytes:
    """A reply as JSON, not pickle: the daemon must not unpickle what a parser it distrusts wrote."""
    if isinstance(value, Document):
        body: dict[str, Any] = {
            "status": status, "text": value.text, "kind": value.kind, "encoding": value.encoding,
            "headings": None if value.headings is None else [[h.line, h.level, h.title] for h in value.headings],
            "page_lines": list(value.page_lines),
        }
    else:
        body = {"status": status, "message": value}
    return json.dumps(body).encode("ascii")  # \u escapes keep even lone surrogates intact


def decode_reply(data: bytes) -> tuple[str, Document | str]:
    """(status, Document or message); ``ValueError`` for anything malformed."""
    body = json.loads(data)
    status = body["status"]
    if status != "ok":
        return str(status), str(body["message"])
    headings = body["headings"]
    doc = Document(
        str(body["text"]), str(body["kind"]), str(body["encoding"]),
        None if headings is None else tuple(Heading(int(a), int(b), str(c)) for a, b, c in headings),
        tuple(int(p) for p in body["page_lines"]),
    )
    return "ok", doc


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def _handle(request: bytes) -> tuple[str, Document | str]:
    from ragd.errors import ExtractError
    from ragd.extract.base import DocumentError
    from ragd.extract.registry import get

    module, name, path, data, limits = pickle.loads(request)
    try:
        importlib.import_module(module)  # registers the extractor when it is not a built-in one
        extractor = get(name)
        return "ok", extractor.extract(Path(path), data, limits)
    except MemoryError:
        return "memory", "out of memory"
    except DocumentError as exc:
        return "failed", str(exc)
    except ExtractError as exc:
        return "skip", str(exc)
    except RecursionError:
        return "failed", "document too deeply nested"
    except Exception as exc:  # a parser's bug on one file is that file's failure
        return "failed", f"cannot extract: {type(exc).__name__}: {exc}"


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    parent = int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid()
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints must not corrupt the replies
    import ragd.extract.registry  # noqa: F401  (imported before the limit: it is the baseline)

    if memory_mb > 0:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin = sys.stdin.buffer
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        request = _read_exact(stdin, _HEADER.unpack(header)[0])
        if request is None:
            return
        try:
            reply = encode_reply(*_handle(request))
        except MemoryError:
            reply = encode_reply("memory", "out of memory")
        del request
        out.write(_HEADER.pack(len(reply)) + reply)
        out.flush()


if __name__ == "__main__":
    main()
